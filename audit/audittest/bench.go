package audittest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// BenchRecord is the record the stores' benchmarks append: a typical
// allowed tool call, spread over 1,000 sessions.
func BenchRecord(i int) audit.Record {
	return audit.Record{Event: "tool.call", Agent: "agent-7", Session: fmt.Sprintf("session-%d", i%1000),
		Tool: "file-reader", Outcome: audit.OutcomeAllowed, Reason: "assigned level meets the required level",
		RequiredLevel: "verified", AssignedLevel: "verified", Tokens: 1234}
}

// Fill stores n BenchRecords of the given number of sessions
// ("session-0"…) in namespace straight into a store, in large
// transactions, with correct tree hashes and a millisecond between
// records: a fast way to a big log.
func Fill(tb testing.TB, st audit.Store, n, sessions int, namespace string) {
	tb.Helper()
	ctx := context.Background()
	var tree Tree
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	batch := make([]audit.Entry, 0, 10_000)
	for i := range n {
		r := BenchRecord(i)
		r.Session = fmt.Sprintf("session-%d", i%sessions)
		r.Time = base.Add(time.Duration(i) * time.Millisecond)
		r.Namespace = namespace
		data, err := audit.EncodeRecord(nil, &r)
		if err != nil {
			tb.Fatal(err)
		}
		e := tree.Add(data)
		e.Record = &r
		batch = append(batch, e)
		if len(batch) == cap(batch) || i == n-1 {
			if err := st.Append(ctx, batch); err != nil {
				tb.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchAppend appends b.N BenchRecords to l from writers goroutines at
// once, each append returning once its record is stored, and reports
// appends per second and the median append ("p50-µs").
func BenchAppend(b *testing.B, l *audit.Log, writers int) {
	ctx := context.Background()
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			var mine []time.Duration
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					break
				}
				t0 := time.Now()
				if _, err := l.Log(ctx, BenchRecord(int(i))); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
	ReportP50(b, lat)
}

// Median returns the middle of d, sorted, which it leaves as it is; 0 if
// d is empty.
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// ReportP50 reports the median of lat in microseconds, as "p50-µs".
func ReportP50(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}
