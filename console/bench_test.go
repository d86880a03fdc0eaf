package console_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/store/sqlite"
	"github.com/agentsec/agentsec/trust"
)

// BenchmarkGuardMetrics measures what counting a decision adds to Guard:
// a stack whose Observer is console's Metrics (watching its log's
// appends too) against the same stack without, around a no-op tool, in
// alternating blocks of calls that take turns to go first, so that both
// see the same noise. It reports each one's median block, per call, and
// their ratio: with the log in memory, where Guard is cheapest and the
// metrics' share largest, and in SQLite on disk, as agentsec serve keeps
// it.
func BenchmarkGuardMetrics(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		benchGuardMetrics(b, 64, func() audit.Store { return audit.NewMemoryStore() })
	})
	b.Run("sqlite", func(b *testing.B) {
		benchGuardMetrics(b, 8, func() audit.Store {
			s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
			if err != nil {
				b.Fatal(err)
			}
			return s
		})
	})
}

func benchGuardMetrics(b *testing.B, block int, store func() audit.Store) {
	newStack := func(observer agentsec.Observer) *agentsec.Stack {
		s, err := agentsec.New(agentsec.Config{
			TrustGate:      agentsec.TrustGateConfig{Rules: []trust.Rule{{Tool: "file-reader", Level: "public"}}, Agents: []trust.Assignment{{Agent: "agent-7", Level: "public"}}},
			Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
			AuditNamespace: "bench",
			Audit:          agentsec.AuditConfig{Store: store()},
			Observer:       observer,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	metrics := console.NewMetrics()
	with, without := newStack(metrics), newStack(nil)
	metrics.Watch(with)
	ctx := context.Background()
	req := agentsec.Request{Agent: "agent-7", Session: "session-1", Tool: "file-reader"}
	noop := func(context.Context) (int64, error) { return 1, nil }
	run := func(s *agentsec.Stack) time.Duration {
		start := time.Now()
		for range block {
			if err := s.Guard(ctx, req, noop); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	var withT, withoutT []time.Duration
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 { // neither always runs first
			withoutT = append(withoutT, run(without))
			withT = append(withT, run(with))
		} else {
			withT = append(withT, run(with))
			withoutT = append(withoutT, run(without))
		}
	}
	mw, mo := median(withT), median(withoutT)
	b.ReportMetric(float64(mo.Nanoseconds())/float64(block), "ns/call-without")
	b.ReportMetric(float64(mw.Nanoseconds())/float64(block), "ns/call-with")
	b.ReportMetric(float64(mw)/float64(mo), "with/without")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
