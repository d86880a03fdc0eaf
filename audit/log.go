package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// ErrUnavailable is returned, wrapped, when the log cannot store a record.
// Callers that must fail closed deny whatever the record was about.
var ErrUnavailable = errors.New("audit log unavailable")

// Options configure a Log.
type Options struct {
	// Namespace is given to records appended without one.
	Namespace string
	// Clock returns the time records are stamped with; nil means
	// time.Now.
	Clock func() time.Time

	// Signer signs the log's checkpoints, and Verifier checks them; make
	// both with NewSigner. Without a Signer the log signs no
	// checkpoints, and only its own consistency can be verified.
	Signer   note.Signer
	Verifier note.Verifier
	// Origin names the log on the first line of its checkpoints. Empty
	// means the signer's key name.
	Origin string
	// CheckpointEvery is how many records may be appended before the log
	// signs a checkpoint; 0 means DefaultCheckpointEvery.
	CheckpointEvery uint64
	// CheckpointInterval is the longest a record waits for a checkpoint
	// covering it; 0 means DefaultCheckpointInterval, and a negative
	// value signs only every CheckpointEvery records and on Close.
	CheckpointInterval time.Duration
	// CheckpointFile, if set, receives every new signed checkpoint,
	// replacing the file atomically: keep it away from the log's store,
	// as the anchor that catches a rewritten or truncated log. If it
	// names a directory — it ends in a separator, or is an existing
	// directory when the log opens — each checkpoint is written there as
	// a file of its own, named by its size, and "latest" is replaced with
	// the newest. NewLog refuses a destination it can't write (see
	// CheckCheckpointFile).
	CheckpointFile string

	// Logger receives a line when appends or checkpoints start failing,
	// with the cause, a summary at most every FailureReportInterval while
	// they go on failing, and a line when they recover. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Checkpoint defaults.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
)

// A Log is an append-only, tamper-evident audit log over a Store.
//
// Its records are the leaves of an RFC 6962 Merkle tree (leaf hash
// SHA-256(0x00 || record bytes)), and it signs checkpoints of the tree —
// after every CheckpointEvery records, at least every CheckpointInterval
// while records arrive, and on Close. Verify recomputes the tree from
// the stored bytes and checks it against every signed checkpoint, so an
// edited, removed, inserted, reordered or truncated record is found. A
// Log is safe for concurrent use.
type Log struct {
	store      Store
	shared     SharedStore      // store, if it is one
	forecaster AppendForecaster // store, if it is one
	gatherer   GatheringStore   // store, if it is one
	namespace  string
	clock      func() time.Time
	realClock  bool // clock is time.Now, whose times hold monotonic readings

	committer

	signer     note.Signer
	verifier   note.Verifier
	origin     string
	cpEvery    uint64
	cpInterval time.Duration
	cpFile     string
	cpDir      bool // cpFile is a directory

	log *slog.Logger // nil means slog.Default(), looked up when used

	// headMu guards the tree's head. Only the committing leader changes
	// it.
	headMu sync.Mutex
	size   uint64
	front  frontier
	// work is the leader's copy of front, equal to it between batches.
	work frontier

	cpMu   sync.Mutex // serializes signing; guards cpSize, hasCP and cpOwed
	cpSize uint64
	hasCP  bool
	// cpOwed counts the records this log appended that no checkpoint of
	// its own covers yet (at open, every record past the latest
	// checkpoint). Over a SharedStore others append too; each log
	// counting only its own keeps the fleet's checkpoints one per
	// CheckpointEvery records, not one per log.
	cpOwed uint64
	// latestCP publishes the latest checkpoint's size, and when this log
	// signed it, for CheckpointStatus: read without cpMu, which is held
	// while a checkpoint is stored.
	latestCP atomic.Pointer[CheckpointStatus]

	// failure holds the error of the last append if it failed, and nil
	// once an append succeeds again; cpFailure likewise for checkpoints.
	failure   atomic.Pointer[error]
	cpFailure atomic.Pointer[error]
	// appendObserver, if set, is told of each batch appended (see
	// ObserveAppends).
	appendObserver atomic.Pointer[func(records int, took time.Duration, err error)]
	// appendHealth and cpHealth log the failures and recoveries.
	appendHealth health
	cpHealth     health

	stopTimer chan struct{}
	timerDone chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewLog opens a log over store, continuing its tree. If the store holds a
// signed checkpoint and opts has a Verifier, the checkpoint must verify,
// name this log's origin, and match the stored tree: NewLog refuses to
// continue a log that was truncated or rewritten since it was signed.
// Verify checks every record; NewLog does not.
func NewLog(ctx context.Context, store Store, opts Options) (*Log, error) {
	if store == nil {
		return nil, errors.New("audit: log needs a store")
	}
	if err := checkNamespace(opts.Namespace); err != nil {
		return nil, err
	}
	l := &Log{
		store: store, namespace: opts.Namespace, clock: opts.Clock,
		signer: opts.Signer, verifier: opts.Verifier, origin: opts.Origin,
		cpEvery: opts.CheckpointEvery, cpInterval: opts.CheckpointInterval, cpFile: opts.CheckpointFile,
		log:          opts.Logger,
		appendHealth: health{what: "append", until: "an append succeeds"},
		cpHealth:     health{what: "checkpoint", until: "a checkpoint is signed, stored and written"},
	}
	l.shared, _ = store.(SharedStore)
	l.forecaster, _ = store.(AppendForecaster)
	l.gatherer, _ = store.(GatheringStore)
	l.spinners = runtime.GOMAXPROCS(0)
	if l.clock == nil {
		l.clock, l.realClock = time.Now, true
	}
	if l.cpEvery == 0 {
		l.cpEvery = DefaultCheckpointEvery
	}
	if l.cpInterval == 0 {
		l.cpInterval = DefaultCheckpointInterval
	}
	switch {
	case l.signer != nil && l.verifier == nil:
		return nil, errors.New("audit: a log with a signer needs its verifier too; make both with NewSigner")
	case l.signer != nil && (l.verifier.Name() != l.signer.Name() || l.verifier.KeyHash() != l.signer.KeyHash()):
		return nil, errors.New("audit: signer and verifier keys do not match")
	case l.signer == nil && l.cpFile != "":
		return nil, errors.New("audit: CheckpointFile needs a Signer")
	}
	if l.cpFile != "" {
		if err := CheckCheckpointFile(l.cpFile); err != nil {
			return nil, err
		}
		l.cpDir = checkpointDir(l.cpFile)
	}
	if l.origin == "" && l.signer != nil {
		l.origin = l.signer.Name()
	}
	if l.origin != "" {
		if err := checkOrigin(l.origin); err != nil {
			return nil, err
		}
	}

	// The latest checkpoint is read before the size: a checkpoint is
	// stored only for a size the log has reached, and sizes only grow, so
	// a log that others append to and sign meanwhile (a SharedStore)
	// can't look truncated.
	cpSize, signed, err := store.LatestCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: reading latest checkpoint: %w", err)
	}
	if err := l.loadHead(ctx); err != nil {
		return nil, err
	}
	if err := l.checkLatestCheckpoint(ctx, cpSize, signed); err != nil {
		return nil, err
	}
	l.cpOwed = l.size - l.cpSize // cpSize is 0 without a checkpoint
	if l.hasCP {
		l.latestCP.Store(&CheckpointStatus{Size: l.cpSize})
	}
	if l.signer != nil && l.cpInterval > 0 {
		l.stopTimer, l.timerDone = make(chan struct{}), make(chan struct{})
		go l.checkpointTimer()
	}
	return l, nil
}

// loadHead reads the log's size and the frontier of its tree from the
// store.
func (l *Log) loadHead(ctx context.Context) error {
	size, err := l.store.Size(ctx)
	if err != nil {
		return fmt.Errorf("audit: reading log size: %w", err)
	}
	if err := l.front.load(size, storeHashReader{ctx, l.store}); err != nil {
		return fmt.Errorf("audit: reading log head: %w", err)
	}
	l.work = l.front
	l.size = size
	return nil
}

// checkLatestCheckpoint checks the stored tree against the store's latest
// checkpoint, signed for cpSize records, when there is one and a verifier
// to check it with.
func (l *Log) checkLatestCheckpoint(ctx context.Context, cpSize uint64, signed []byte) error {
	if signed == nil || l.verifier == nil {
		return nil
	}
	cp, err := OpenCheckpoint(signed, l.verifier)
	switch {
	case err != nil:
		return fmt.Errorf("audit: latest stored checkpoint (size %d): %w", cpSize, err)
	case cp.Size != cpSize:
		return fmt.Errorf("audit: checkpoint stored as size %d says size %d", cpSize, cp.Size)
	case cp.Origin != l.origin:
		return fmt.Errorf("audit: the log's checkpoints name origin %q, not %q", cp.Origin, l.origin)
	case cp.Size > l.size:
		return fmt.Errorf("audit: the log holds %d records but its checkpoint covers %d: records %d to %d are missing; run agentsec audit verify",
			l.size, cp.Size, l.size, cp.Size-1)
	}
	root, err := tlog.TreeHash(int64(cp.Size), storeHashReader{ctx, l.store})
	if err != nil {
		return fmt.Errorf("audit: computing tree at checkpoint size %d: %w", cp.Size, err)
	}
	if root != cp.Root {
		return fmt.Errorf("audit: the stored tree of %d records does not match its signed checkpoint; run agentsec audit verify", cp.Size)
	}
	l.cpSize, l.hasCP = cp.Size, true
	return nil
}

func checkNamespace(ns string) error {
	r := Record{Event: "-", Namespace: ns}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("audit: namespace %q: %w", ns, err)
	}
	return nil
}

// since is the time elapsed since t, a time of the log's clock: on the
// monotonic clock alone when the clock is time.Now.
func (l *Log) since(t time.Time) time.Duration {
	if l.realClock {
		return time.Since(t)
	}
	return l.clock().Sub(t)
}

// CheckpointStatus describes the latest signed checkpoint a Log knows of.
type CheckpointStatus struct {
	// Size is how many records it covers.
	Size uint64
	// Signed is when this Log signed it; zero for one it found in its
	// store when it opened.
	Signed time.Time
}

// LatestCheckpoint returns the latest signed checkpoint this log knows
// of — one it signed, or the store's latest when it opened — and false if
// there is none.
func (l *Log) LatestCheckpoint() (CheckpointStatus, bool) {
	if cp := l.latestCP.Load(); cp != nil {
		return *cp, true
	}
	return CheckpointStatus{}, false
}

// ObserveAppends has f told of each batch of records the log appends to
// its store, or fails to: how many records, how long the batch took from
// its first record's Log call to the store's answer, and the store's
// error. f is called by the appending goroutine, with callers waiting:
// it must be quick. A nil f stops the telling.
func (l *Log) ObserveAppends(f func(records int, took time.Duration, err error)) {
	if f == nil {
		l.appendObserver.Store(nil)
		return
	}
	l.appendObserver.Store(&f)
}

// Namespace returns the namespace given to records that lack one.
func (l *Log) Namespace() string { return l.namespace }

// Origin returns the origin line of the log's checkpoints.
func (l *Log) Origin() string { return l.origin }

// Verifier returns the verifier of the log's checkpoints, or nil.
func (l *Log) Verifier() note.Verifier { return l.verifier }

// Store returns the log's store.
func (l *Log) Store() Store { return l.store }

// Size returns the number of records in the log.
func (l *Log) Size() uint64 {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	return l.size
}

// Root returns the log's size and the hash of its tree.
func (l *Log) Root() (uint64, Hash) {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	return l.size, l.front.root(l.size)
}

// Err returns nil if the last append and the last checkpoint succeeded,
// and otherwise the failure, which wraps ErrUnavailable and the cause:
// records that can't be stored, or can't be anchored by a signed
// checkpoint, are not safely recorded. It is cheap enough to call before
// every governed call, so that a failing log stops calls before they run.
// It is the process's health signal; Options.Logger gets the history.
func (l *Log) Err() error {
	if p := l.failure.Load(); p != nil {
		return *p
	}
	if p := l.cpFailure.Load(); p != nil {
		return *p
	}
	return nil
}

// fail marks the log failed by an append's error. Only the committing
// leader calls it.
func (l *Log) fail(err error) error {
	failure := fmt.Errorf("audit: %w: %w", ErrUnavailable, err)
	l.failure.Store(&failure)
	l.appendHealth.failed(l, err)
	return failure
}

// failCheckpoint marks the log failed by a checkpoint's error, that
// leaves the records past the last checkpoint, up to size, unanchored.
// The caller holds cpMu.
func (l *Log) failCheckpoint(err error, size uint64) error {
	failure := fmt.Errorf("audit: %w: %w", ErrUnavailable, err)
	l.cpFailure.Store(&failure)
	l.cpHealth.failed(l, err, slog.Uint64("unanchored", size-l.cpSize))
	return failure
}

// Log appends rec and returns it as stored, with Seq, Time and Namespace
// set. The record is in the store, and as durable as the store makes it,
// when Log returns nil. An invalid record is an error wrapping
// ErrInvalidRecord; a store failure is an error wrapping ErrUnavailable,
// and nothing is appended.
//
// Concurrent calls are committed together: each encodes and hashes its
// record on its own, then one of them appends the waiting records to the
// store in a single Append.
func (l *Log) Log(ctx context.Context, rec Record) (Record, error) {
	arrived := l.clock()
	rec.Time = arrived.UTC()
	if rec.Namespace == "" {
		rec.Namespace = l.namespace
	}
	r := getPending()
	defer putPending(r)
	// The leading 0x00 is the leaf hash's domain separator.
	buf, err := EncodeRecord(append(r.buf[:0], 0x00), &rec)
	if err != nil {
		return Record{}, err
	}
	r.buf = buf
	r.rec, r.arrived = rec, arrived
	r.leaf = leafHash(buf)
	l.commit(ctx, r)
	if r.err != nil {
		return Record{}, r.err
	}
	rec.Seq = r.seq
	return rec, nil
}

// Checkpoint signs a checkpoint of the log as it is now, unless the latest
// one already covers every record, and returns the latest signed
// checkpoint. It is an error for the log to have no Signer.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) {
	if l.signer == nil {
		return nil, errors.New("audit: the log has no signing key")
	}
	if err := l.checkpoint(ctx); err != nil {
		return nil, err
	}
	_, signed, err := l.store.LatestCheckpoint(ctx)
	return signed, err
}

// checkpoint signs and stores a checkpoint of the current head if it is
// newer than the last one. A failure marks the log failed until a
// checkpoint is stored.
func (l *Log) checkpoint(ctx context.Context) error {
	if l.signer == nil {
		return nil
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	size, root := l.Root()
	if l.hasCP && size <= l.cpSize {
		return nil
	}
	signed, err := SignCheckpoint(Checkpoint{Origin: l.origin, Size: size, Root: root}, l.signer)
	if err != nil {
		return l.failCheckpoint(fmt.Errorf("signing checkpoint: %w", err), size)
	}
	if err := l.store.AddCheckpoint(ctx, size, signed); err != nil {
		return l.failCheckpoint(fmt.Errorf("storing checkpoint: %w", err), size)
	}
	if l.cpFile != "" {
		if err := writeCheckpointFile(l.cpFile, l.cpDir, size, signed); err != nil {
			return l.failCheckpoint(fmt.Errorf("writing checkpoint to %s: %w", l.cpFile, err), size)
		}
	}
	l.cpSize, l.hasCP, l.cpOwed = size, true, 0
	l.latestCP.Store(&CheckpointStatus{Size: size, Signed: l.clock()})
	if l.cpFailure.Load() != nil {
		l.cpFailure.Store(nil)
		l.cpHealth.recovered(l, slog.Uint64("size", size))
	}
	return nil
}

// checkpointDue counts n records this log appended and reports whether
// enough have arrived since its last checkpoint to sign another.
func (l *Log) checkpointDue(n int) bool {
	if l.signer == nil {
		return false
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	l.cpOwed += uint64(n)
	return l.cpOwed >= l.cpEvery
}

func (l *Log) checkpointTimer() {
	defer close(l.timerDone)
	t := time.NewTicker(l.cpInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stopTimer:
			return
		case <-t.C:
			_ = l.checkpoint(context.Background()) // a failure marks the log failed
		}
	}
}

// Close signs a final checkpoint, if the log has a Signer and records
// since the last one, and closes the store. It is safe to call more than
// once.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		if l.stopTimer != nil {
			close(l.stopTimer)
			<-l.timerDone
		}
		l.closeErr = errors.Join(l.checkpoint(context.Background()), l.store.Close())
	})
	return l.closeErr
}

// Verify checks the whole log from the stored bytes against every stored
// checkpoint, as the package function Verify does, and that the store
// still holds every record this Log appended. It returns the number of
// records verified.
func (l *Log) Verify(ctx context.Context) (uint64, error) {
	size, root := l.Root()
	res, err := Verify(ctx, l.store, VerifyOptions{Verifier: l.verifier, Origin: l.origin})
	if err != nil {
		return res.Records, err
	}
	if res.Records < size {
		return res.Records, &VerifyError{Seq: res.Records,
			Reason: fmt.Sprintf("missing: this log appended %d records", size)}
	}
	if res.Records == size && res.Root != root {
		return res.Records, &VerifyError{Seq: 0, Reason: "the stored tree does not match the tree this log built"}
	}
	return res.Records, nil
}

// leafHash returns the RFC 6962 leaf hash of a record, given as
// 0x00 || record bytes.
func leafHash(prefixed []byte) Hash { return sha256.Sum256(prefixed) }
