package console_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/trust"
)

// BenchmarkGuardMetrics measures what counting a decision adds to Guard:
// a stack whose Observer is console's Metrics against the same stack
// without, both with the log in memory, in alternating blocks of calls,
// so that both see the same noise, taking turns to go first. It reports each one's median block,
// per call, and their ratio.
func BenchmarkGuardMetrics(b *testing.B) {
	newStack := func(observer agentsec.Observer) *agentsec.Stack {
		s, err := agentsec.New(agentsec.Config{
			TrustGate:      agentsec.TrustGateConfig{Rules: []trust.Rule{{Tool: "file-reader", Level: "public"}}, Agents: []trust.Assignment{{Agent: "agent-7", Level: "public"}}},
			Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
			AuditNamespace: "bench",
			Audit:          agentsec.AuditConfig{Store: audit.NewMemoryStore()},
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
	const block = 64
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
	b.ReportMetric(float64(mo.Nanoseconds())/block, "ns/call-without")
	b.ReportMetric(float64(mw.Nanoseconds())/block, "ns/call-with")
	b.ReportMetric(float64(mw)/float64(mo), "with/without")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
