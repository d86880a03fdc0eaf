package console

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// addedBuckets are the gateway-added duration histogram's: the
// gateway's own part of a call, tens of microseconds when all is well.
var addedBuckets = []int64{
	int64(10 * time.Microsecond), int64(25 * time.Microsecond), int64(50 * time.Microsecond), int64(100 * time.Microsecond),
	int64(250 * time.Microsecond), int64(500 * time.Microsecond), int64(time.Millisecond), int64(2500 * time.Microsecond),
	int64(5 * time.Millisecond), int64(10 * time.Millisecond), int64(25 * time.Millisecond), int64(100 * time.Millisecond),
}

var (
	addedDesc = prometheus.NewDesc("agentsec_gateway_added_duration_seconds",
		"The gateway's own part of each tools/call sent upstream: the whole call less the upstream's exchange.",
		[]string{"upstream"}, nil)
	exchangeDesc = prometheus.NewDesc("agentsec_upstream_duration_seconds",
		"The upstream's part of each tools/call: from sending it to its answer.",
		[]string{"upstream"}, nil)
	upstreamUpDesc = prometheus.NewDesc("agentsec_upstream_up",
		"1 if the latest connection to the upstream opened, 0 if it failed to open or broke; absent until one is tried.",
		[]string{"upstream"}, nil)
	upstreamFailuresDesc = prometheus.NewDesc("agentsec_upstream_failures_total",
		"Connections to the upstream that failed to open or broke (sessions ending theirs are not failures).",
		[]string{"upstream"}, nil)
)

// upstreamSeries counts one upstream's calls and connections.
type upstreamSeries struct {
	added, exchange histogram
	state           atomic.Int32 // 0 unknown, 1 up, 2 down
	failures        atomic.Uint64
}

// upstreams holds the series of the gateway's upstreams, by name.
type upstreams struct{ byName sync.Map }

func (u *upstreams) series(name string) *upstreamSeries {
	if s, ok := u.byName.Load(name); ok {
		return s.(*upstreamSeries)
	}
	s, _ := u.byName.LoadOrStore(name, &upstreamSeries{
		added: newHistogram(addedBuckets, 1e-9), exchange: newHistogram(callBuckets, 1e-9)})
	return s.(*upstreamSeries)
}

// ObserveToolCall implements mcpgate.Observer.
func (m *Metrics) ObserveToolCall(upstream string, added, exchange time.Duration) {
	s := m.upstreams.series(upstream)
	s.added.observe(int64(added))
	s.exchange.observe(int64(exchange))
}

// ObserveUpstream implements mcpgate.Observer.
func (m *Metrics) ObserveUpstream(upstream string, up bool) {
	s := m.upstreams.series(upstream)
	if up {
		s.state.Store(1)
		return
	}
	s.state.Store(2)
	s.failures.Add(1)
}

// Describe implements prometheus.Collector.
func (u *upstreams) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{addedDesc, exchangeDesc, upstreamUpDesc, upstreamFailuresDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (u *upstreams) Collect(ch chan<- prometheus.Metric) {
	u.byName.Range(func(key, value any) bool {
		name, s := key.(string), value.(*upstreamSeries)
		for _, h := range []struct {
			h    *histogram
			desc *prometheus.Desc
		}{{&s.added, addedDesc}, {&s.exchange, exchangeDesc}} {
			if metric := h.h.metric(h.desc, name); metric != nil {
				ch <- metric
			}
		}
		if st := s.state.Load(); st != 0 {
			ch <- prometheus.MustNewConstMetric(upstreamUpDesc, prometheus.GaugeValue, float64(2-st), name)
		}
		ch <- prometheus.MustNewConstMetric(upstreamFailuresDesc, prometheus.CounterValue, float64(s.failures.Load()), name)
		return true
	})
}
