package console

import (
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
)

// Label values a Metrics gives decisions.
const (
	// OtherTool stands for the tools beyond MaxToolLabels, and for names
	// no trust rule covers: an agent picks the names it sends, and each
	// would otherwise be a series of its own.
	OtherTool = "other"
	// MaxToolLabels bounds the tools named in labels.
	MaxToolLabels = 256
)

// reasons are the reason label's values: an allowed call's, then the
// denials' by the *DeniedError's Kind, and last a denial of a kind not
// known here.
var reasons = [...]struct {
	kind error
	code string
}{
	{nil, "allowed"},
	{agentsec.ErrTrustDenied, "trust_denied"},
	{agentsec.ErrBudgetExceeded, "budget_exceeded"},
	{agentsec.ErrBudgetUnavailable, "budget_unavailable"},
	{agentsec.ErrAuditUnavailable, "audit_unavailable"},
	{agentsec.ErrInvalidRequest, "invalid_request"},
	{nil, "denied"},
}

// events are the event label's values: the audit events of decisions,
// and last "other", for any event a later Stack may add.
var events = [...]string{agentsec.EventToolCall, agentsec.EventToolResult, "other"}

// outcomes are the outcome label's values.
var outcomes = [...]string{string(audit.OutcomeAllowed), string(audit.OutcomeDenied)}

// durationBuckets are the upper bounds of the duration histogram's
// buckets: from half a millisecond, a call to a local tool, to a minute.
var durationBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute,
}

// toolSeries counts one tool label's decisions and durations with
// atomic adds, which a decision costs and nothing more: the series are
// made from the counts when /metrics is scraped.
type toolSeries struct {
	decisions [len(events)][len(reasons)]atomic.Uint64
	durations [len(outcomes)]durationCounts
}

// durationCounts is a histogram's counts: one per bucket (not
// cumulative), the last for what is above every bound, and the sum.
type durationCounts struct {
	buckets [len(durationBuckets) + 1]atomic.Uint64
	sum     atomic.Int64 // nanoseconds
}

func (h *durationCounts) observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

// Metrics are a stack's Prometheus metrics. It is the stack's Observer
// (agentsec.Config.Observer), counting each decision as it is settled;
// Watch adds what is read from the stack when /metrics is scraped.
//
// Names and labels follow Prometheus's conventions and, where one
// exists, OpenTelemetry's semantic conventions for MCP: the tool is the
// gen_ai_tool_name label (gen_ai.tool.name). Every label's values are
// bounded: an event and an outcome, a reason code from a fixed list,
// and at most MaxToolLabels tools; no agent or session ids.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	tools     sync.Map // tool label → *toolSeries
	toolMu    sync.Mutex
	toolCount int // tools in labels so far, OtherTool not counted
}

var (
	decisionsDesc = prometheus.NewDesc("agentsec_decisions_total",
		"Governance decisions settled, by audit event, outcome (allow or deny), reason code and tool. A denial is a decision, not an error.",
		[]string{"event", "outcome", "reason", "gen_ai_tool_name"}, nil)
	durationsDesc = prometheus.NewDesc("agentsec_tool_call_duration_seconds",
		"Time from a governed call's admission to its settling: the tool's run, or the upstream's round trip, and the governance around it.",
		[]string{"outcome", "gen_ai_tool_name"}, nil)
)

// NewMetrics returns Metrics with the Go runtime's and the process's
// metrics registered beside agentsec's.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(decisionsCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m
}

// ObserveDecision implements agentsec.Observer.
func (m *Metrics) ObserveDecision(d agentsec.Decision) {
	reason := 0 // allowed
	if d.Kind != nil || d.Record.Outcome == audit.OutcomeDenied {
		reason = len(reasons) - 1
		for i := 1; i < len(reasons)-1; i++ {
			if errors.Is(d.Kind, reasons[i].kind) {
				reason = i
				break
			}
		}
	}
	event := slices.Index(events[:len(events)-1], d.Record.Event)
	if event < 0 {
		event = len(events) - 1
	}
	ts := m.toolSeries(d.Record)
	ts.decisions[event][reason].Add(1)
	if d.Ran {
		ts.durations[outcomeOf(reason)].observe(d.Duration)
	}
}

// outcomeOf is the index in outcomes of a reason's outcome.
func outcomeOf(reason int) int { return min(reason, 1) }

// toolSeries returns the series of rec's tool label: the tool's name if
// a trust rule covers it and it is one of the first MaxToolLabels such
// names, else OtherTool.
func (m *Metrics) toolSeries(rec audit.Record) *toolSeries {
	tool := OtherTool
	if rec.RequiredLevel != "" {
		tool = rec.Tool
	}
	if ts, ok := m.tools.Load(tool); ok {
		return ts.(*toolSeries)
	}
	m.toolMu.Lock()
	defer m.toolMu.Unlock()
	if ts, ok := m.tools.Load(tool); ok {
		return ts.(*toolSeries)
	}
	if tool != OtherTool {
		if m.toolCount >= MaxToolLabels {
			tool = OtherTool
		} else {
			m.toolCount++
		}
	}
	ts, _ := m.tools.LoadOrStore(tool, new(toolSeries))
	return ts.(*toolSeries)
}

// decisionsCollector makes the decisions' series from their counts.
type decisionsCollector struct{ m *Metrics }

// Describe implements prometheus.Collector.
func (c decisionsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- decisionsDesc
	ch <- durationsDesc
}

// Collect implements prometheus.Collector: a series for each count
// that is not zero.
func (c decisionsCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.tools.Range(func(key, value any) bool {
		tool, ts := key.(string), value.(*toolSeries)
		for e := range ts.decisions {
			for r := range ts.decisions[e] {
				if n := ts.decisions[e][r].Load(); n > 0 {
					ch <- prometheus.MustNewConstMetric(decisionsDesc, prometheus.CounterValue, float64(n),
						events[e], outcomes[outcomeOf(r)], reasons[r].code, tool)
				}
			}
		}
		for o := range ts.durations {
			h := &ts.durations[o]
			// The count is the buckets' sum, read once each, so that the
			// cumulative counts never exceed it while calls go on.
			var count uint64
			cumulative := make(map[float64]uint64, len(durationBuckets))
			for i, bound := range durationBuckets {
				count += h.buckets[i].Load()
				cumulative[bound.Seconds()] = count
			}
			count += h.buckets[len(durationBuckets)].Load()
			if count > 0 {
				ch <- prometheus.MustNewConstHistogram(durationsDesc, count, time.Duration(h.sum.Load()).Seconds(), cumulative,
					outcomes[o], tool)
			}
		}
		return true
	})
}

// Watch adds the gauges read from stack at each scrape: the audit log's
// size and whether it takes appends.
func (m *Metrics) Watch(stack *agentsec.Stack) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentsec_audit_log_records",
			Help: "Records in the audit log.",
		}, func() float64 { return float64(stack.Audit.Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentsec_audit_log_up",
			Help: "1 while the audit log takes appends, 0 while it is failing (and every call is denied).",
		}, func() float64 {
			if stack.Audit.Err() != nil {
				return 0
			}
			return 1
		}),
	)
}

// ServeHTTP serves the metrics in Prometheus's exposition formats.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.handler.ServeHTTP(w, r)
}
