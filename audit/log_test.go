package audit_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/mod/sumdb/note"
)

// tickClock returns a clock that starts at start and moves one second
// forward on every call.
func tickClock(start time.Time) func() time.Time {
	var mu sync.Mutex
	next := start
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := next
		next = next.Add(time.Second)
		return t
	}
}

func newLog(t testing.TB, s audit.Store, opts audit.Options) *audit.Log {
	t.Helper()
	l, err := audit.NewLog(context.Background(), s, opts)
	if err != nil {
		t.Fatalf("NewLog: %v", err)
	}
	// Stop the checkpoint timer; a test that cares calls Close itself.
	t.Cleanup(func() { l.Close() })
	return l
}

// storedRecords decodes every record in s.
func storedRecords(t *testing.T, s audit.Store) []audit.Record {
	t.Helper()
	var recs []audit.Record
	err := s.Scan(t.Context(), 0, 1<<62, func(e audit.Entry) error {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			return err
		}
		r.Seq = e.Seq
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return recs
}

func TestLogStampsRecords(t *testing.T) {
	// The clock runs an hour ahead of UTC; records must be in UTC anyway.
	east := time.FixedZone("east", 3600)
	start := time.Date(2025, 3, 4, 6, 7, 8, 9, east)
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Namespace: "app", Clock: tickClock(start)})

	in := []audit.Record{
		{Event: "tool.call", Agent: "alice", Outcome: audit.OutcomeAllowed, Tokens: 5, Attrs: map[string]string{"k": "v"}},
		// The caller's Seq and Time are replaced, its namespace kept.
		{Event: "trust.assign", Namespace: "other", Seq: 42, Time: time.Unix(1, 0)},
		{Event: "tool.call", Agent: "bob", Outcome: audit.OutcomeDenied},
	}
	want := []audit.Record{
		{Seq: 0, Time: start.UTC(), Namespace: "app", Event: "tool.call", Agent: "alice", Outcome: audit.OutcomeAllowed, Tokens: 5, Attrs: map[string]string{"k": "v"}},
		{Seq: 1, Time: start.Add(time.Second).UTC(), Namespace: "other", Event: "trust.assign"},
		{Seq: 2, Time: start.Add(2 * time.Second).UTC(), Namespace: "app", Event: "tool.call", Agent: "bob", Outcome: audit.OutcomeDenied},
	}
	for i, rec := range in {
		got, err := l.Log(t.Context(), rec)
		if err != nil {
			t.Fatalf("Log(%+v): %v", rec, err)
		}
		if diff := cmp.Diff(want[i], got); diff != "" {
			t.Errorf("Log(%+v) mismatch (-want +got):\n%s", rec, diff)
		}
		if got.Time.Location() != time.UTC {
			t.Errorf("Log(%+v): got time in %v, want UTC", rec, got.Time.Location())
		}
	}
	if got := l.Size(); got != uint64(len(want)) {
		t.Errorf("Size = %d, want %d", got, len(want))
	}
	if got := l.Namespace(); got != "app" {
		t.Errorf("Namespace = %q, want %q", got, "app")
	}
	// What is stored is what Log returned.
	if diff := cmp.Diff(want, storedRecords(t, s)); diff != "" {
		t.Errorf("stored records mismatch (-want +got):\n%s", diff)
	}
}

func TestLogDefaultClock(t *testing.T) {
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	before := time.Now()
	rec, err := l.Log(t.Context(), audit.Record{Event: "e"})
	after := time.Now()
	if err != nil {
		t.Fatalf("Log: %v", err)
	}
	if rec.Time.Before(before.Truncate(0)) || rec.Time.After(after) || rec.Time.Location() != time.UTC {
		t.Errorf("Log stamped %v, want a UTC time between %v and %v", rec.Time, before, after)
	}
	if rec.Namespace != "" {
		t.Errorf("Log without a namespace: got Namespace %q, want empty", rec.Namespace)
	}
}

// newKey returns a new signer and its verifier, named name.
func newKey(t testing.TB, name string) (note.Signer, note.Verifier) {
	t.Helper()
	skey, _, err := audit.GenerateKey(name)
	if err != nil {
		t.Fatalf("GenerateKey(%q): %v", name, err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return signer, verifier
}

func TestNewLogErrors(t *testing.T) {
	if _, err := audit.NewLog(t.Context(), nil, audit.Options{}); err == nil {
		t.Errorf("NewLog(nil store) = nil error, want error")
	}
	_, err := audit.NewLog(t.Context(), audit.NewMemoryStore(), audit.Options{Namespace: "ns\xff"})
	if !errors.Is(err, audit.ErrInvalidRecord) {
		t.Errorf("NewLog with an invalid namespace: got error %v, want %v", err, audit.ErrInvalidRecord)
	}

	signer, verifier := newKey(t, "log.example")
	_, otherVerifier := newKey(t, "log.example")
	tests := []struct {
		name string
		opts audit.Options
	}{
		{"signer without verifier", audit.Options{Signer: signer}},
		{"verifier of another key", audit.Options{Signer: signer, Verifier: otherVerifier}},
		{"checkpoint file without signer", audit.Options{CheckpointFile: filepath.Join(t.TempDir(), "checkpoint")}},
		{"origin with a newline", audit.Options{Signer: signer, Verifier: verifier, Origin: "log\nexample"}},
		{"origin with a control character", audit.Options{Signer: signer, Verifier: verifier, Origin: "log\x00"}},
		{"origin not UTF-8", audit.Options{Signer: signer, Verifier: verifier, Origin: "log\xff"}},
		{"origin too long", audit.Options{Signer: signer, Verifier: verifier, Origin: strings.Repeat("o", 257)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := audit.NewLog(t.Context(), audit.NewMemoryStore(), tt.opts)
			if err == nil {
				l.Close()
				t.Errorf("NewLog(%+v) = nil error, want error", tt.opts)
			}
		})
	}
}

func TestNewLogStoreErrors(t *testing.T) {
	errStore := errors.New("store failed")
	// A store of 5 records, so that NewLog reads its hashes.
	mem := audit.NewMemoryStore()
	l := newLog(t, mem, audit.Options{})
	for range 5 {
		if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	for _, s := range []*faultyStore{
		{Store: mem, sizeErr: errStore},
		{Store: mem, readHashesErr: errStore},
		{Store: mem, latestErr: errStore},
	} {
		_, err := audit.NewLog(t.Context(), s, audit.Options{})
		if !errors.Is(err, errStore) {
			t.Errorf("NewLog over %+v: got error %v, want %v", s, err, errStore)
		}
	}
}

func TestLogOrigin(t *testing.T) {
	signer, verifier := newKey(t, "log.example")
	tests := []struct {
		origin, want string
	}{
		{"", "log.example"}, // the key's name
		{"example.com/audit/v1", "example.com/audit/v1"},
		{"a log with spaces and ü", "a log with spaces and ü"},
	}
	for _, tt := range tests {
		s := audit.NewMemoryStore()
		l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, Origin: tt.origin})
		if got := l.Origin(); got != tt.want {
			t.Errorf("Origin with Options.Origin %q = %q, want %q", tt.origin, got, tt.want)
		}
		signed, err := l.Checkpoint(t.Context())
		if err != nil {
			t.Fatalf("Checkpoint: %v", err)
		}
		cp, err := audit.OpenCheckpoint(signed, verifier)
		if err != nil || cp.Origin != tt.want {
			t.Errorf("checkpoint with Options.Origin %q: OpenCheckpoint = %+v, %v; want origin %q", tt.origin, cp, err, tt.want)
		}
		if l.Verifier() != verifier || l.Store() != s {
			t.Errorf("Verifier, Store = %v, %v; want the ones given", l.Verifier(), l.Store())
		}
	}
	if got := newLog(t, audit.NewMemoryStore(), audit.Options{}).Origin(); got != "" {
		t.Errorf("Origin of a log without a key = %q, want empty", got)
	}
}

func TestLogInvalidRecord(t *testing.T) {
	tests := []struct {
		name string
		rec  audit.Record
	}{
		{"empty event", audit.Record{Agent: "alice"}},
		{"unknown outcome", audit.Record{Event: "e", Outcome: "maybe"}},
		{"negative tokens", audit.Record{Event: "e", Tokens: -1}},
		{"invalid UTF-8 event", audit.Record{Event: "e\xff"}},
		{"invalid UTF-8 namespace", audit.Record{Event: "e", Namespace: "\xff"}},
		{"invalid UTF-8 reason", audit.Record{Event: "e", Reason: "\xc3("}},
		{"invalid UTF-8 attr value", audit.Record{Event: "e", Attrs: map[string]string{"k": "\xff"}}},
		{"empty attr key", audit.Record{Event: "e", Attrs: map[string]string{"": "v"}}},
		{"larger than MaxRecordSize", audit.Record{Event: "e", Reason: strings.Repeat("x", audit.MaxRecordSize)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := audit.NewMemoryStore()
			l := newLog(t, s, audit.Options{Namespace: "app"})
			_, err := l.Log(t.Context(), tt.rec)
			if !errors.Is(err, audit.ErrInvalidRecord) {
				t.Errorf("Log: got error %v, want %v", err, audit.ErrInvalidRecord)
			}
			if errors.Is(err, audit.ErrUnavailable) {
				t.Errorf("Log: error %v matches %v, want it not to", err, audit.ErrUnavailable)
			}
			// A refused record is the caller's fault, not the log's.
			if err := l.Err(); err != nil {
				t.Errorf("Err after an invalid record = %v, want nil", err)
			}
			if got := l.Size(); got != 0 {
				t.Errorf("Size = %d, want 0", got)
			}
			if size, _ := s.Size(t.Context()); size != 0 {
				t.Errorf("store size = %d, want 0", size)
			}
		})
	}
}

// faultyStore wraps a Store and fails its calls on demand.
type faultyStore struct {
	audit.Store
	sizeErr, readHashesErr, latestErr, scanErr, checkpointsErr error

	mu                      sync.Mutex
	appendErr, addCheckpErr error
}

func (s *faultyStore) fail(appendErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendErr = appendErr
}

func (s *faultyStore) failCheckpoints(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addCheckpErr = err
}

func (s *faultyStore) Size(ctx context.Context) (uint64, error) {
	if s.sizeErr != nil {
		return 0, s.sizeErr
	}
	return s.Store.Size(ctx)
}

func (s *faultyStore) Append(ctx context.Context, entries []audit.Entry) error {
	s.mu.Lock()
	err := s.appendErr
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Store.Append(ctx, entries)
}

func (s *faultyStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if s.scanErr != nil {
		return s.scanErr
	}
	return s.Store.Scan(ctx, from, to, fn)
}

func (s *faultyStore) ReadHashes(ctx context.Context, indexes []int64) ([]audit.Hash, error) {
	if s.readHashesErr != nil {
		return nil, s.readHashesErr
	}
	return s.Store.ReadHashes(ctx, indexes)
}

func (s *faultyStore) AddCheckpoint(ctx context.Context, size uint64, signed []byte) error {
	s.mu.Lock()
	err := s.addCheckpErr
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Store.AddCheckpoint(ctx, size, signed)
}

func (s *faultyStore) Checkpoints(ctx context.Context, fn func(uint64, []byte) error) error {
	if s.checkpointsErr != nil {
		return s.checkpointsErr
	}
	return s.Store.Checkpoints(ctx, fn)
}

func (s *faultyStore) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	if s.latestErr != nil {
		return 0, nil, s.latestErr
	}
	return s.Store.LatestCheckpoint(ctx)
}

func TestLogStoreFailure(t *testing.T) {
	mem := audit.NewMemoryStore()
	s := &faultyStore{Store: mem}
	l := newLog(t, s, audit.Options{Namespace: "app"})
	ctx := t.Context()

	for _, agent := range []string{"a0", "a1"} {
		if _, err := l.Log(ctx, audit.Record{Event: "e", Agent: agent}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err before any failure = %v, want nil", err)
	}

	errDisk := errors.New("disk full")
	s.fail(errDisk)
	for range 2 { // the failure persists across calls
		rec, err := l.Log(ctx, audit.Record{Event: "e", Agent: "lost"})
		if !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errDisk) {
			t.Errorf("Log with a failing store: got error %v, want one matching %v and %v", err, audit.ErrUnavailable, errDisk)
		}
		if diff := cmp.Diff(audit.Record{}, rec); diff != "" {
			t.Errorf("Log with a failing store returned a record (-want +got):\n%s", diff)
		}
		if err := l.Err(); !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errDisk) {
			t.Errorf("Err after a failed append = %v, want one matching %v and %v", err, audit.ErrUnavailable, errDisk)
		}
		if got := l.Size(); got != 2 {
			t.Errorf("Size after a failed append = %d, want 2", got)
		}
		if size, _ := mem.Size(ctx); size != 2 {
			t.Errorf("store size after a failed append = %d, want 2", size)
		}
	}
	// An invalid record neither clears nor replaces the failure.
	if _, err := l.Log(ctx, audit.Record{}); !errors.Is(err, audit.ErrInvalidRecord) {
		t.Errorf("Log(invalid record): got error %v, want %v", err, audit.ErrInvalidRecord)
	}
	if err := l.Err(); !errors.Is(err, errDisk) {
		t.Errorf("Err after an invalid record = %v, want %v", err, errDisk)
	}

	s.fail(nil)
	rec, err := l.Log(ctx, audit.Record{Event: "e", Agent: "a2"})
	if err != nil {
		t.Fatalf("Log after the store recovered: %v", err)
	}
	if rec.Seq != 2 {
		t.Errorf("Log after the store recovered: got Seq %d, want 2", rec.Seq)
	}
	if err := l.Err(); err != nil {
		t.Errorf("Err after the store recovered = %v, want nil", err)
	}
	if n, err := l.Verify(ctx); n != 3 || err != nil {
		t.Errorf("Verify = %d, %v; want 3, nil", n, err)
	}
	var agents []string
	for _, r := range storedRecords(t, mem) {
		agents = append(agents, r.Agent)
	}
	if diff := cmp.Diff([]string{"a0", "a1", "a2"}, agents); diff != "" {
		t.Errorf("stored agents mismatch (-want +got):\n%s", diff)
	}
}

func TestLogCanceledContext(t *testing.T) {
	// The memory store ignores the context; a store that honours it
	// fails like any other store failure.
	s := &faultyStore{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{})
	s.fail(context.Canceled)
	_, err := l.Log(t.Context(), audit.Record{Event: "e"})
	if !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("Log: got error %v, want one matching %v and %v", err, audit.ErrUnavailable, context.Canceled)
	}
}

func TestLogClose(t *testing.T) {
	s := &closeCounter{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{})
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if s.closed != 1 {
		t.Errorf("two Close calls closed the store %d times, want 1", s.closed)
	}
}

type closeCounter struct {
	audit.Store
	closed int
}

func (s *closeCounter) Close() error {
	s.closed++
	return s.Store.Close()
}

// LatestCheckpoint is the checkpoint a log signed, with its time, or the
// one it found in its store, whose time it does not know.
func TestLatestCheckpoint(t *testing.T) {
	signer, verifier := newKey(t, "audit.test")
	l, s := signedLog(t, "agent", signer, verifier)
	cp, ok := l.LatestCheckpoint()
	if !ok || cp.Size != signedN || cp.Signed.IsZero() {
		t.Errorf("LatestCheckpoint of the log that signed it = %+v, %v; want size %d and a time", cp, ok, signedN)
	}
	reopened := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, Origin: signedOrigin, CheckpointInterval: -1})
	if cp, ok := reopened.LatestCheckpoint(); !ok || cp.Size != signedN || !cp.Signed.IsZero() {
		t.Errorf("LatestCheckpoint of a log opened over it = %+v, %v; want size %d and no time", cp, ok, signedN)
	}
	if _, ok := newLog(t, audit.NewMemoryStore(), audit.Options{}).LatestCheckpoint(); ok {
		t.Error("LatestCheckpoint of an empty, unsigned log: ok")
	}
}

// damagedSize is a store whose size was written by someone who can
// write the database.
type damagedSize struct {
	audit.Store
	size uint64
}

func (s damagedSize) Size(context.Context) (uint64, error) { return s.size, nil }

// A store whose size is beyond any log's is damaged: opening a log on
// it, or verifying it, fails at once. (A size of 2^62+1 asked tlog to
// split the largest int64, which never ends: the log hung as it opened.)
func TestDamagedSizeIsRefused(t *testing.T) {
	for _, size := range []uint64{audit.MaxLogSize, audit.MaxLogSize + 1, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		done := make(chan [2]error, 1)
		go func() {
			store := damagedSize{audit.NewMemoryStore(), size}
			_, openErr := audit.NewLog(context.Background(), store, audit.Options{Namespace: "damaged"})
			_, verifyErr := audit.Verify(context.Background(), store, audit.VerifyOptions{})
			done <- [2]error{openErr, verifyErr}
		}()
		select {
		case errs := <-done:
			if errs[0] == nil || errs[1] == nil {
				t.Errorf("size %d: NewLog: %v; Verify: %v; want errors", size, errs[0], errs[1])
			} else if size > audit.MaxLogSize && !strings.Contains(errs[0].Error(), "size is damaged") {
				t.Errorf("size %d: NewLog: %v; want the size called damaged", size, errs[0])
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("size %d: NewLog or Verify did not return", size)
		}
	}
}
