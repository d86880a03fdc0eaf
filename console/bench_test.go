package console_test

import (
	"context"
	"github.com/agentsec/agentsec/audit/audittest"
	"path/filepath"
	"sync/atomic"
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
// it; and, for what the hook itself costs, an Observer that does nothing
// against none, with the log in memory.
func BenchmarkGuardMetrics(b *testing.B) {
	memory := func() audit.Store { return audit.NewMemoryStore() }
	b.Run("memory", func(b *testing.B) { benchGuardMetrics(b, 64, memory, true) })
	b.Run("memory-nop-observer", func(b *testing.B) { benchGuardMetrics(b, 64, memory, false) })
	b.Run("sqlite", func(b *testing.B) {
		benchGuardMetrics(b, 8, func() audit.Store {
			s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, true)
	})
}

// nopObserver is an Observer that does nothing.
type nopObserver struct{}

func (nopObserver) ObserveDecision(agentsec.Decision) {}

// benchGuardMetrics runs BenchmarkGuardMetrics on stores from store, with
// console's Metrics or, without metrics, a nopObserver.
func benchGuardMetrics(b *testing.B, block int, store func() audit.Store, metrics bool) {
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
	var with *agentsec.Stack
	if metrics {
		m := console.NewMetrics()
		with = newStack(m)
		m.Watch(with)
	} else {
		with = newStack(nopObserver{})
	}
	without := newStack(nil)
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
	mw, mo := audittest.Median(withT), audittest.Median(withoutT)
	b.ReportMetric(float64(mo.Nanoseconds())/float64(block), "ns/call-without")
	b.ReportMetric(float64(mw.Nanoseconds())/float64(block), "ns/call-with")
	b.ReportMetric(float64(mw)/float64(mo), "with/without")
}

// BenchmarkObserveDecision is Metrics counting one allowed call that ran,
// alone in a loop: its series found, the counter's and the histogram's
// atomic adds.
func BenchmarkObserveDecision(b *testing.B) {
	m := console.NewMetrics()
	d := agentsec.Decision{Record: audit.Record{Event: agentsec.EventToolCall, Tool: "file-reader", RequiredLevel: "public",
		Outcome: audit.OutcomeAllowed}, Recorded: true, Ran: true, Duration: time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveDecision(d)
	}
}

// BenchmarkMetricsFloor is the floor under what Metrics adds to Guard on
// this machine: the two reads of the monotonic clock that Guard without
// metrics does not make and any exact duration needs — as the call is
// admitted, and as its batch's append ends — and the seven atomic adds
// with which Metrics counts the decision, its duration and its batch (a
// counter, and a bucket and a sum for each of three histograms).
func BenchmarkMetricsFloor(b *testing.B) {
	epoch := time.Now()
	var counts [7]atomic.Uint64
	var sink time.Duration
	for b.Loop() {
		began := time.Since(epoch)
		for i := range counts {
			counts[i].Add(1)
		}
		sink += time.Since(epoch) - began
	}
	if sink < 0 {
		b.Fatal("the monotonic clock went back")
	}
}
