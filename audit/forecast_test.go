package audit_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
)

// forecasting is a shared store that checks the Log's forecasts: each
// AppendComing is followed by an append of its own. Two can be owed at
// once: one for a batch its leader has taken but not yet begun to
// append, and one for the batch queued behind it.
type forecasting struct {
	audit.SharedStore
	t *testing.T

	mu        sync.Mutex
	owed      int // appends announced that have not begun
	forecasts int
	appends   int
}

func (s *forecasting) AppendComing() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owed++
	s.forecasts++
	if s.owed > 2 {
		s.t.Errorf("%d appends announced and not begun", s.owed)
	}
}

func (s *forecasting) AppendShared(ctx context.Context, build func(uint64, audit.HashReader) ([]audit.Entry, error)) error {
	s.mu.Lock()
	s.owed = max(s.owed-1, 0)
	s.appends++
	s.mu.Unlock()
	time.Sleep(200 * time.Microsecond) // a sync's worth, so that records queue behind it
	return s.SharedStore.AppendShared(ctx, build)
}

// A Log tells a store that forecasts of each batch queued behind the one
// being appended, once, before that batch's append begins — so a store
// that has work wait for an announced append never waits in vain — and
// under contention it does tell.
func TestLogForecastsAppends(t *testing.T) {
	s := &forecasting{SharedStore: audittest.NewSharedMemory(1)[0], t: t}
	l, err := audit.NewLog(context.Background(), s, audit.Options{Namespace: "forecast"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range 50 {
				if _, err := l.Log(context.Background(), audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owed != 0 {
		t.Errorf("the Log announced %d appends it never made", s.owed)
	}
	if s.forecasts == 0 || s.forecasts >= s.appends {
		t.Errorf("%d forecasts for %d appends of 1,600 records from 32 writers, want some, each before an append", s.forecasts, s.appends)
	}
	t.Logf("%d appends, %d announced", s.appends, s.forecasts)
}
