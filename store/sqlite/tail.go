package sqlite

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// The tail is what a writable Store appended, durably in the record log,
// but has not yet committed to the database: the indexer goroutine
// commits it in the background, many records to a transaction, so that
// an append costs the record log's one sync and none of SQLite's work.
// Reads look at the tail as well as the database, so the Store reads its
// own appends at once; other processes' read-only Stores see them once
// the indexer has committed them, within indexDelay.

// indexDelay is how long a record waits in the tail at most, when the
// indexer keeps up. Tests make it shorter.
var indexDelay = 200 * time.Millisecond

const (
	// indexBatch is how many tail records make the indexer commit at once.
	indexBatch = 512
	// maxTail bounds the tail: an append that finds it full waits for
	// the indexer, so that appends faster than SQLite can take them are
	// slowed to its pace rather than fill memory.
	maxTail = 1 << 15
)

// A checkpointFrame is a signed checkpoint in the tail.
type checkpointFrame struct {
	size uint64
	note []byte
}

// tail holds the records and checkpoints not yet in the database.
type tail struct {
	mu          sync.Mutex
	base        uint64        // the seq of entries[0]: every record below it is in the database
	entries     []audit.Entry // owned copies, in seq order
	checkpoints []checkpointFrame
	wake        chan struct{}
	space       sync.Cond // signalled when the indexer drops records, or fails
	failed      bool      // the indexer failed: appends stopped, nothing waits
}

func newTail(base uint64) *tail {
	t := &tail{base: base, wake: make(chan struct{}, 1)}
	t.space.L = &t.mu
	return t
}

// tailView is a consistent view of the tail: every record below base was
// committed to the database before the view was taken.
type tailView struct {
	base        uint64
	entries     []audit.Entry
	checkpoints []checkpointFrame
}

func (t *tail) view() tailView {
	t.mu.Lock()
	defer t.mu.Unlock()
	return tailView{t.base, t.entries[:len(t.entries):len(t.entries)], t.checkpoints[:len(t.checkpoints):len(t.checkpoints)]}
}

// push adds copies of entries to the tail and wakes the indexer once
// enough are waiting.
func (t *tail) push(entries []audit.Entry) {
	t.mu.Lock()
	for len(t.entries) >= maxTail && !t.failed {
		t.poke()
		t.space.Wait()
	}
	for _, e := range entries {
		t.entries = append(t.entries, audit.Entry{Seq: e.Seq, Data: slices.Clone(e.Data), Hashes: slices.Clone(e.Hashes)})
	}
	n := len(t.entries)
	t.mu.Unlock()
	if n == len(entries) || n >= indexBatch {
		t.poke() // the first to wait, or enough
	}
}

// pushCheckpoint adds a checkpoint to the tail.
func (t *tail) pushCheckpoint(size uint64, note []byte) {
	t.mu.Lock()
	t.checkpoints = append(t.checkpoints, checkpointFrame{size, slices.Clone(note)})
	t.mu.Unlock()
	t.poke()
}

func (t *tail) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// drop removes the first n records and m checkpoints, which the database
// now holds.
func (t *tail) drop(n, m int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.base += uint64(n)
	// Views share the arrays: shift nothing in place.
	t.entries = slices.Clip(t.entries[n:])
	t.checkpoints = slices.Clip(t.checkpoints[m:])
	t.space.Broadcast()
}

// fail lets appends waiting for space go: the store takes no more.
func (t *tail) fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
	t.space.Broadcast()
}

// len returns how many records and checkpoints wait in the tail.
func (t *tail) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries) + len(t.checkpoints)
}

// entry returns the tail's record seq, if it holds it.
func (v tailView) entry(seq uint64) (audit.Entry, bool) {
	if seq < v.base || seq-v.base >= uint64(len(v.entries)) {
		return audit.Entry{}, false
	}
	return v.entries[seq-v.base], true
}

// each calls fn for the view's records from from up to to.
func (v tailView) each(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	end := v.base + uint64(len(v.entries))
	for seq := max(from, v.base); seq < min(to, end); seq++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(v.entries[seq-v.base]); err != nil {
			return err
		}
	}
	return nil
}

// checkpoint returns the tail's checkpoint of size, if it holds one.
func (v tailView) checkpoint(size uint64) ([]byte, bool) {
	for _, c := range v.checkpoints {
		if c.size == size {
			return c.note, true
		}
	}
	return nil, false
}

// runIndexer commits the tail to the database, a batch at a time: at
// once when indexBatch records wait, else indexDelay after the first,
// until stop closes; then it commits what is left and returns.
func (s *Store) runIndexer(stop <-chan struct{}) {
	defer close(s.indexerDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		due := false
		select {
		case <-stop:
			if !s.abandoned.Load() {
				_ = s.indexTail() // an error fails the record log, which keeps the records
			}
			return
		case <-s.tail.wake:
		case <-timer.C:
			armed, due = false, true
		}
		if n := s.tail.len(); n == 0 || (n < indexBatch && !due) {
			if n > 0 && !armed {
				timer.Reset(indexDelay)
				armed = true
			}
			continue
		}
		_ = s.indexTail()
		if s.tail.len() > 0 && !armed {
			timer.Reset(indexDelay)
			armed = true
		}
	}
}

// indexTail commits the tail's records, with their index rows, and its
// checkpoints to the database in one transaction. If that fails, the
// records stay in the tail, durable in the record log, and the store
// takes no more appends: its reads would go on growing the tail.
func (s *Store) indexTail() error {
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	return s.indexTailLocked()
}

func (s *Store) indexTailLocked() error {
	v := s.tail.view()
	if len(v.entries) == 0 && len(v.checkpoints) == 0 {
		return nil
	}
	if err := s.commitTail(v); err != nil {
		// The database lacks records the record log holds, which a
		// second copy must not follow: the store takes no more appends
		// until it is opened again and replays them.
		err = fmt.Errorf("%w (the store takes no more appends; reopen it)", err)
		s.indexErr.CompareAndSwap(nil, &err)
		s.tail.fail()
		return err
	}
	s.tail.drop(len(v.entries), len(v.checkpoints))
	s.committed.Store(v.base + uint64(len(v.entries)))
	s.indexed += len(v.entries)
	if s.indexed >= checkpointRecords {
		s.indexed = 0
		s.checkpointSoon()
	}
	return nil
}

// Flush commits the records and checkpoints appended so far to the
// database, where other processes' read-only Stores find them; the
// indexer commits them within indexDelay anyway.
func (s *Store) Flush(ctx context.Context) error {
	if s.tail == nil {
		return nil
	}
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	return s.indexTailLocked()
}

func (s *Store) commitTail(v tailView) error {
	ctx := context.Background()
	tx, err := s.begin(ctx)
	if err != nil {
		return s.wrap("indexing", err)
	}
	defer tx.Rollback()
	if len(v.entries) > 0 {
		rows, err := s.insertRecords(ctx, tx, v.entries, v.base)
		if err != nil {
			return err
		}
		if err := s.writeIndex(ctx, tx, rows); err != nil {
			return err
		}
	}
	for _, c := range v.checkpoints {
		if _, err := insertCheckpoint(ctx, tx, c.size, c.note); err != nil {
			return err
		}
	}
	testHook("indexing")
	if err := tx.Commit(); err != nil {
		return s.wrap("indexing", err)
	}
	testHook("indexed")
	return nil
}
