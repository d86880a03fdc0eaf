package audit_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// batchCountingStore records the size of every Append it receives.
type batchCountingStore struct {
	audit.Store
	appends, entries atomic.Int64
	largest          atomic.Int64
}

func (s *batchCountingStore) Append(ctx context.Context, entries []audit.Entry) error {
	s.appends.Add(1)
	s.entries.Add(int64(len(entries)))
	for {
		cur := s.largest.Load()
		if int64(len(entries)) <= cur || s.largest.CompareAndSwap(cur, int64(len(entries))) {
			break
		}
	}
	return s.Store.Append(ctx, entries)
}

// Many concurrent appenders, while the store fails now and then: every
// Log call either returns a sequence number or an error wrapping
// ErrUnavailable, the sequence numbers returned are exactly 0..n-1, each
// returned record is stored under its number, and the log verifies.
func TestGroupCommitUnderFailures(t *testing.T) {
	ctx := context.Background()
	mem := audit.NewMemoryStore()
	faulty := &faultyStore{Store: mem}
	counting := &batchCountingStore{Store: faulty}
	l := newLog(t, counting, audit.Options{Namespace: "app"})

	const writers, perWriter = 16, 500
	var (
		mu     sync.Mutex
		agents = map[uint64]string{}
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	stop := make(chan struct{})
	go func() { // flip the store between failing and working
		for i := 0; ; i++ {
			select {
			case <-stop:
				faulty.fail(nil)
				return
			default:
			}
			if i%7 == 0 {
				faulty.fail(errors.New("flaky disk"))
			} else {
				faulty.fail(nil)
			}
		}
	}()
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				agent := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				rec, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: agent})
				if err != nil {
					if !errors.Is(err, audit.ErrUnavailable) {
						t.Errorf("Log error %v does not wrap ErrUnavailable", err)
					}
					failed.Add(1)
					continue
				}
				mu.Lock()
				if prev, dup := agents[rec.Seq]; dup {
					t.Errorf("seq %d returned twice, to %s and %s", rec.Seq, prev, agent)
				}
				agents[rec.Seq] = agent
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)

	ok := uint64(len(agents))
	if ok+uint64(failed.Load()) != writers*perWriter {
		t.Fatalf("%d succeeded + %d failed != %d calls", ok, failed.Load(), writers*perWriter)
	}
	if got := l.Size(); got != ok {
		t.Fatalf("log size %d, want the %d successful appends", got, ok)
	}
	for seq := range ok {
		if _, found := agents[seq]; !found {
			t.Fatalf("no caller was given seq %d", seq)
		}
	}
	for _, r := range storedRecords(t, mem) {
		if agents[r.Seq] != r.Agent {
			t.Fatalf("record %d holds agent %q, but %q was told it got that seq", r.Seq, r.Agent, agents[r.Seq])
		}
	}
	if n, err := l.Verify(ctx); err != nil || n != ok {
		t.Fatalf("Verify = %d, %v; want %d, nil", n, err, ok)
	}
	t.Logf("%d appends in %d store batches (largest %d); %d failed",
		counting.entries.Load(), counting.appends.Load(), counting.largest.Load(), failed.Load())
}

// Under contention, records are committed several to one store Append.
func TestGroupCommitBatches(t *testing.T) {
	ctx := context.Background()
	slow := &slowStore{Store: audit.NewMemoryStore(), gate: make(chan struct{}), entered: make(chan struct{})}
	counting := &batchCountingStore{Store: slow}
	l := newLog(t, counting, audit.Options{Namespace: "app"})

	var wg sync.WaitGroup
	// The first append holds the store until the other 49 are queued.
	wg.Go(func() {
		if _, err := l.Log(ctx, audit.Record{Event: "first"}); err != nil {
			t.Error(err)
		}
	})
	<-slow.entered
	for range 49 {
		wg.Go(func() {
			if _, err := l.Log(ctx, audit.Record{Event: "queued"}); err != nil {
				t.Error(err)
			}
		})
	}
	for l.QueueLen() < 49 {
		time.Sleep(100 * time.Microsecond) // until every appender queues behind the first
	}
	close(slow.gate)
	wg.Wait()
	if got := counting.appends.Load(); got != 2 {
		t.Errorf("50 appends took %d store Appends, want 2 (the first, then one batch of 49)", got)
	}
	if n, err := l.Verify(ctx); err != nil || n != 50 {
		t.Errorf("Verify = %d, %v", n, err)
	}
}

// slowStore blocks its first Append until gate is closed.
type slowStore struct {
	audit.Store
	gate    chan struct{}
	once    sync.Once
	entered chan struct{}
}

func (s *slowStore) Append(ctx context.Context, entries []audit.Entry) error {
	s.once.Do(func() {
		close(s.entered)
		<-s.gate
	})
	return s.Store.Append(ctx, entries)
}
