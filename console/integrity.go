package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// verifyTimeout bounds a full verification run from the console.
const verifyTimeout = time.Hour

// verifyProgressEvery is how many records pass between the updates of a
// verification's progress.
const verifyProgressEvery = 1024

// A verification is the console's run of a full verification of the log:
// one at a time per process, whichever operator asked.
type verification struct {
	mu sync.Mutex
	verificationState
}

// verificationState is a verification's state, which each run starts
// afresh.
type verificationState struct {
	running bool
	done    uint64
	total   uint64
	result  string
	failed  bool
	bad     uint64
	hasBad  bool
}

// verificationView is a verification as the page and /integrity/status
// show it.
type verificationView struct {
	Running bool   `json:"running"`
	Done    uint64 `json:"done"`
	Total   uint64 `json:"total"`
	Result  string `json:"result,omitempty"`
	Failed  bool   `json:"failed,omitempty"`
	BadSeq  uint64 `json:"bad_seq,omitempty"`
	HasBad  bool   `json:"has_bad,omitempty"`
}

func (v *verification) view() *verificationView {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.running && v.result == "" {
		return nil
	}
	return &verificationView{Running: v.running, Done: v.done, Total: v.total, Result: v.result,
		Failed: v.failed, BadSeq: v.bad, HasBad: v.hasBad}
}

// start begins a verification of store, unless one is running; it
// reports whether it began one.
func (v *verification) start(store audit.Store, opts audit.VerifyOptions) bool {
	v.mu.Lock()
	if v.running {
		v.mu.Unlock()
		return false
	}
	v.verificationState = verificationState{running: true}
	v.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	if size, err := store.Size(ctx); err == nil {
		v.mu.Lock()
		v.total = size
		v.mu.Unlock()
	}
	opts.ProgressEvery = verifyProgressEvery
	opts.Progress = func(done, total uint64) {
		v.mu.Lock()
		v.done, v.total = done, total
		v.mu.Unlock()
	}
	go func() {
		defer cancel()
		res, err := audit.Verify(ctx, store, opts)
		v.mu.Lock()
		defer v.mu.Unlock()
		v.running = false
		var verr *audit.VerifyError
		var cerr *audit.CheckpointError
		switch {
		case errors.As(err, &verr):
			v.failed, v.bad, v.hasBad = true, verr.Seq, true
			v.result = fmt.Sprintf("The log does not verify: record %d: %s.", verr.Seq, verr.Reason)
		case errors.As(err, &cerr):
			v.failed = true
			v.result = "The log does not verify: " + oneLine(err.Error())
		case err != nil:
			v.failed = true
			v.result = "The verification could not finish: " + oneLine(err.Error())
		case res.Unvouched():
			v.failed = true
			v.result = fmt.Sprintf("The log does not verify: no signed checkpoint covers any of its %d records, so nothing ties them to the key.", res.Records)
		default:
			v.done = res.Records
			v.result = fmt.Sprintf("Verified %d records against the signed checkpoints (%d); the latest covers %d, and %d records are newer.",
				res.Records, res.Checkpoints, res.Latest.Size, res.Uncovered())
		}
	}()
	return true
}

// integrityView is the log's state, as the integrity page shows it.
type integrityView struct {
	Size           uint64
	HasCheckpoint  bool
	CheckpointSize uint64
	CheckpointAge  string
	Unsigned       uint64
	CopiedTo       string
}

func (u *ui) integrityPage(w http.ResponseWriter, r *http.Request, op *operator) {
	v := &view{Title: "Log integrity", Page: "integrity", Operator: op, Verification: u.verify.view()}
	log := u.cfg.Stack.Audit
	iv := &integrityView{CopiedTo: u.cfg.CheckpointCopies}
	size, err := log.Store().Size(r.Context())
	if err != nil {
		v.Error = "the audit log can't be read: " + oneLine(err.Error())
	}
	iv.Size = size
	if cp, ok := log.LatestCheckpoint(); ok {
		iv.HasCheckpoint, iv.CheckpointSize = true, cp.Size
		if !cp.Signed.IsZero() {
			iv.CheckpointAge = time.Since(cp.Signed).Round(time.Second).String()
		}
		if size > cp.Size {
			iv.Unsigned = size - cp.Size
		}
	} else {
		iv.Unsigned = size
	}
	v.Integrity = iv
	u.render(w, http.StatusOK, "integrity", v)
}

// startVerify runs a full verification of the log; any operator may, as it
// changes nothing.
func (u *ui) startVerify(w http.ResponseWriter, r *http.Request, _ *operator) {
	log := u.cfg.Stack.Audit
	u.verify.start(log.Store(), audit.VerifyOptions{Verifier: log.Verifier(), Origin: log.Origin()})
	http.Redirect(w, r, "/integrity", http.StatusSeeOther)
}

// verifyStatus answers the verification's progress as JSON.
func (u *ui) verifyStatus(w http.ResponseWriter, r *http.Request, _ *operator) {
	securityHeaders(w.Header())
	w.Header().Set("Content-Type", "application/json")
	v := u.verify.view()
	if v == nil {
		v = &verificationView{}
	}
	json.NewEncoder(w).Encode(v)
}
