package audittest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec/audit"
)

// RunShared checks that Logs over several handles to one audit.SharedStore
// — as replicas sharing a database hold — append to one log: concurrent
// appends from every Log get distinct sequence numbers, the stored tree is
// the one every Log signs checkpoints of, and the log verifies. newHandles
// returns n handles to one new, empty store.
func RunShared(t *testing.T, newHandles func(t *testing.T, n int) []audit.SharedStore) {
	t.Run("ConcurrentLogs", func(t *testing.T) { testSharedConcurrentLogs(t, newHandles(t, 3)) })
	t.Run("BuildErrorStoresNothing", func(t *testing.T) { testSharedBuildError(t, newHandles(t, 1)[0]) })
	t.Run("OpenWhileAnotherAppends", func(t *testing.T) { testSharedOpenWhileAnotherAppends(t, newHandles(t, 2)) })
	t.Run("SameSizeSameCheckpoint", func(t *testing.T) { testSharedSameSizeSameCheckpoint(t, newHandles(t, 2)) })
	t.Run("LostAcknowledgement", func(t *testing.T) { testSharedLostAcknowledgement(t, newHandles(t, 2)) })
}

// testSharedLostAcknowledgement loses the acknowledgement of a stored
// batch, and another log appends before the first finds out: the batch
// counts as stored (the store grew past it, and holds its hashes), the
// first log's append succeeds, and both logs go on appending to one log.
func testSharedLostAcknowledgement(t *testing.T, stores []audit.SharedStore) {
	ctx := t.Context()
	other, err := audit.NewLog(ctx, stores[1], audit.Options{Namespace: "audittest"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var once sync.Once
	lossy := lostAck{SharedStore: stores[0], lost: new(atomic.Bool), after: func() {
		once.Do(func() {
			if _, err := other.Log(ctx, audit.Record{Event: "audittest.other", Outcome: audit.OutcomeAllowed}); err != nil {
				t.Errorf("the other log's append: %v", err)
			}
		})
	}}
	l, err := audit.NewLog(ctx, lossy, audit.Options{Namespace: "audittest"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if rec, err := l.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil || rec.Seq != 0 {
		t.Fatalf("an append whose acknowledgement was lost = seq %d, %v; want 0, nil", rec.Seq, err)
	}
	if rec, err := l.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil || rec.Seq != 2 {
		t.Errorf("the next append = seq %d, %v; want 2, nil", rec.Seq, err)
	}
	if n, err := l.Verify(ctx); n != 3 || err != nil {
		t.Errorf("Verify = %d, %v; want 3, nil", n, err)
	}
}

// lostAck is a SharedStore whose first AppendShared stores its batch,
// calls after, and then reports a failure.
type lostAck struct {
	audit.SharedStore
	after func()
	lost  *atomic.Bool
}

func (s lostAck) AppendShared(ctx context.Context, build func(uint64, audit.HashReader) ([]audit.Entry, error)) error {
	err := s.SharedStore.AppendShared(ctx, build)
	if err != nil || s.lost.Swap(true) {
		return err
	}
	s.after()
	return errors.New("audittest: the acknowledgement was lost")
}

// testSharedSameSizeSameCheckpoint has two logs sign the same size: they
// sign the one tree with the one key, so the second stores the same bytes
// — a different note of a stored size is refused — and gets them back.
func testSharedSameSizeSameCheckpoint(t *testing.T, stores []audit.SharedStore) {
	ctx := t.Context()
	signer, verifier := testKey(t, "audittest-shared")
	opts := audit.Options{Namespace: "audittest", Signer: signer, Verifier: verifier, CheckpointInterval: -1}
	a, err := audit.NewLog(ctx, stores[0], opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for range 10 {
		if _, err := a.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil {
			t.Fatal(err)
		}
	}
	// b opens before a signs, so it has no checkpoint of size 10 and
	// signs one itself.
	b, err := audit.NewLog(ctx, stores[1], opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	first, err := a.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatalf("the second log's checkpoint of the same size: %v", err)
	}
	if string(first) != string(second) {
		t.Errorf("two logs signed size 10 differently:\n%s\n%s", first, second)
	}
}

// testSharedOpenWhileAnotherAppends opens a log just as another appends
// and signs a checkpoint — between the new log's reading the store's size
// and its latest checkpoint: the new log must not take the store for
// truncated.
func testSharedOpenWhileAnotherAppends(t *testing.T, stores []audit.SharedStore) {
	ctx := t.Context()
	signer, verifier := testKey(t, "audittest-shared")
	writer, err := audit.NewLog(ctx, stores[0], audit.Options{Namespace: "audittest", Signer: signer, Verifier: verifier,
		CheckpointEvery: 1, CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	if _, err := writer.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	racing := afterRead{SharedStore: stores[1], hook: func() {
		once.Do(func() {
			if _, err := writer.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil {
				t.Errorf("the other log's append: %v", err)
			}
		})
	}}
	l, err := audit.NewLog(ctx, racing, audit.Options{Namespace: "audittest", Verifier: verifier, Origin: "audittest-shared"})
	if err != nil {
		t.Fatalf("NewLog as another log appends and signs: %v", err)
	}
	if size := l.Size(); size != 2 {
		t.Errorf("the new log's size = %d, want 2", size)
	}
	if rec, err := l.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil || rec.Seq != 2 {
		t.Errorf("the new log's append = seq %d, %v; want 2, nil", rec.Seq, err)
	}
}

// afterRead calls hook each time Size or LatestCheckpoint has read the
// store: between NewLog's two reads, whichever it makes first.
type afterRead struct {
	audit.SharedStore
	hook func()
}

func (s afterRead) Size(ctx context.Context) (uint64, error) {
	n, err := s.SharedStore.Size(ctx)
	s.hook()
	return n, err
}

func (s afterRead) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	n, signed, err := s.SharedStore.LatestCheckpoint(ctx)
	s.hook()
	return n, signed, err
}

func testSharedConcurrentLogs(t *testing.T, stores []audit.SharedStore) {
	const perLog, writers = 300, 8
	ctx := t.Context()
	signer, verifier := testKey(t, "audittest-shared")
	logs := make([]*audit.Log, len(stores))
	for i, s := range stores {
		l, err := audit.NewLog(ctx, s, audit.Options{Namespace: "audittest", Signer: signer, Verifier: verifier,
			CheckpointEvery: 50, CheckpointInterval: -1})
		if err != nil {
			t.Fatalf("NewLog over handle %d: %v", i, err)
		}
		logs[i] = l
		// Closing a Log closes its store: only once the test is done.
		defer l.Close()
	}
	total := len(logs) * perLog
	seqs := make([]uint64, total)
	errs := make([]error, total)
	var wg sync.WaitGroup
	for li, l := range logs {
		for w := range writers {
			wg.Go(func() {
				for i := w; i < perLog; i += writers {
					id := li*perLog + i
					rec, err := l.Log(ctx, audit.Record{Event: "audittest.shared", Agent: fmt.Sprintf("agent-%d", id),
						Outcome: audit.OutcomeAllowed})
					seqs[id], errs[id] = rec.Seq, err
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Log: %v", err)
	}
	for i, l := range logs {
		if _, err := l.Checkpoint(ctx); err != nil {
			t.Fatalf("Checkpoint of log %d: %v", i, err)
		}
	}

	// Every call got its own Seq, and the record there is its own.
	sorted := slices.Sorted(slices.Values(seqs))
	for i, seq := range sorted {
		if seq != uint64(i) {
			t.Fatalf("Seqs of %d Log calls over %d logs, sorted: got %d at position %d, want %d", total, len(logs), seq, i, i)
		}
	}
	s := stores[0]
	wantSize(t, s, uint64(total))
	for _, e := range scan(t, s, 0, uint64(total)) {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			t.Fatalf("DecodeRecord(entry %d): %v", e.Seq, err)
		}
		var id int
		if _, err := fmt.Sscanf(r.Agent, "agent-%d", &id); err != nil || id < 0 || id >= total || seqs[id] != e.Seq {
			t.Fatalf("entry %d holds the record of %q, which Log did not give that Seq", e.Seq, r.Agent)
		}
	}
	// The tree verifies against the checkpoints every log signed.
	var cps int
	if err := s.Checkpoints(ctx, func(uint64, []byte) error { cps++; return nil }); err != nil {
		t.Fatal(err)
	}
	// Each log signs one per CheckpointEvery (50) records of its own, and
	// one more when asked: not one per 50 of everyone's.
	if cps < len(logs) || cps > total/50+2*len(logs) {
		t.Errorf("%d checkpoints stored, want from %d to %d", cps, len(logs), total/50+2*len(logs))
	}
	verify(t, s, audit.VerifyOptions{Verifier: verifier}, uint64(total))

	// A log opened afterwards continues the same tree.
	l, err := audit.NewLog(ctx, stores[len(stores)-1], audit.Options{Namespace: "audittest", Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatalf("NewLog after the others: %v", err)
	}
	if rec, err := l.Log(ctx, audit.Record{Event: "audittest.shared", Outcome: audit.OutcomeAllowed}); err != nil || rec.Seq != uint64(total) {
		t.Fatalf("Log after the others = seq %d, %v; want %d, nil", rec.Seq, err, total)
	}
	if n, err := l.Verify(ctx); n != uint64(total)+1 || err != nil {
		t.Fatalf("Verify = %d, %v; want %d, nil", n, err, total+1)
	}
	l.Close()
}

func testSharedBuildError(t *testing.T, s audit.SharedStore) {
	ctx := t.Context()
	all, _ := makeEntries(3)
	appendEntries(t, s, all[:1])
	refused := errors.New("refused by build")
	var sawSize uint64
	err := s.AppendShared(ctx, func(size uint64, _ audit.HashReader) ([]audit.Entry, error) {
		sawSize = size
		return nil, refused
	})
	if !errors.Is(err, refused) {
		t.Errorf("AppendShared with a failing build = %v, want its error", err)
	}
	if sawSize != 1 {
		t.Errorf("build saw size %d, want 1", sawSize)
	}
	wantSize(t, s, 1)
	// Entries that don't start at the size build was given are refused.
	err = s.AppendShared(ctx, func(uint64, audit.HashReader) ([]audit.Entry, error) {
		return cloneEntries(all[2:3]), nil
	})
	if err == nil {
		t.Errorf("AppendShared of entry 2 to a log of size 1 = nil, want an error")
	}
	wantSize(t, s, 1)
	if err := s.AppendShared(ctx, func(size uint64, read audit.HashReader) ([]audit.Entry, error) {
		return cloneEntries(all[1:3]), nil
	}); err != nil {
		t.Fatalf("AppendShared of entries 1 and 2: %v", err)
	}
	wantSize(t, s, 3)
	wantEntries(t, "Scan(0, 3)", scan(t, s, 0, 3), all)
}

// SharedMemory is an audit.SharedStore in memory, for tests of code that
// runs several Logs over one store: its handles share one MemoryStore.
type SharedMemory struct {
	*audit.MemoryStore
	mu *sync.Mutex
}

// NewSharedMemory returns n handles to one new MemoryStore.
func NewSharedMemory(n int) []audit.SharedStore {
	m, mu := audit.NewMemoryStore(), &sync.Mutex{}
	out := make([]audit.SharedStore, n)
	for i := range out {
		out[i] = SharedMemory{m, mu}
	}
	return out
}

// AppendShared implements audit.SharedStore.
func (s SharedMemory) AppendShared(ctx context.Context, build func(uint64, audit.HashReader) ([]audit.Entry, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	size, err := s.Size(ctx)
	if err != nil {
		return err
	}
	entries, err := build(size, func(indexes []int64) ([]audit.Hash, error) { return s.ReadHashes(ctx, indexes) })
	if err != nil {
		return err
	}
	return s.Append(ctx, entries)
}
