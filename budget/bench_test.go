package budget_test

import (
	"context"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec/budget"
)

// unlimited keeps a benchmark's session from ever running out.
var unlimited = budget.Limits{Tokens: math.MaxInt64, Calls: math.MaxInt64}

func benchEnforcer(b *testing.B) *budget.Enforcer {
	b.Helper()
	e, err := budget.NewEnforcer(budget.NewMemoryStore(), unlimited)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkReserveCommit measures one Reserve and Commit pair on one
// session. The target is 100 ns/op at most.
func BenchmarkReserveCommit(b *testing.B) {
	ctx := context.Background()
	e := benchEnforcer(b)
	if _, err := e.Open(ctx, "bench", unlimited); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, err := e.Reserve(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Commit(ctx, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReserveCommitParallel measures Reserve and Commit pairs from
// many goroutines, each on its own session.
func BenchmarkReserveCommitParallel(b *testing.B) {
	ctx := context.Background()
	e := benchEnforcer(b)
	// RunParallel starts GOMAXPROCS goroutines; make one session for each
	// before the timer runs.
	sessions := make([]string, runtime.GOMAXPROCS(0))
	for i := range sessions {
		sessions[i] = "bench-" + strconv.Itoa(i)
		if _, err := e.Open(ctx, sessions[i], unlimited); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		session := sessions[next.Add(1)-1]
		for pb.Next() {
			r, err := e.Reserve(ctx, session)
			if err != nil {
				b.Error(err)
				return
			}
			if err := r.Commit(ctx, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRecordSpending measures RecordSpending on one session.
func BenchmarkRecordSpending(b *testing.B) {
	ctx := context.Background()
	e := benchEnforcer(b)
	if _, err := e.Open(ctx, "bench", unlimited); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := e.RecordSpending(ctx, "bench", 1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineMutexPairs locks and unlocks an uncontended mutex
// twice, as Reserve and Commit each do once, for reading the figures above
// against this machine.
func BenchmarkBaselineMutexPairs(b *testing.B) {
	var mu sync.Mutex
	n := 0
	for b.Loop() {
		mu.Lock()
		n++
		mu.Unlock()
		mu.Lock()
		n++
		mu.Unlock()
	}
	runtime.KeepAlive(n)
}
