package console

import (
	"errors"
	"maps"
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
	"github.com/agentsec/agentsec/mcpgate"
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

// callBuckets are the upper bounds of the call duration histogram's
// buckets: from half a millisecond, a call to a local tool, to a minute.
var callBuckets = []int64{
	int64(500 * time.Microsecond), int64(time.Millisecond), int64(2500 * time.Microsecond), int64(5 * time.Millisecond),
	int64(10 * time.Millisecond), int64(25 * time.Millisecond), int64(50 * time.Millisecond), int64(100 * time.Millisecond),
	int64(250 * time.Millisecond), int64(500 * time.Millisecond), int64(time.Second), int64(2500 * time.Millisecond),
	int64(5 * time.Second), int64(10 * time.Second), int64(30 * time.Second), int64(time.Minute),
}

// appendBuckets are the append duration histogram's: from a tmpfs write
// to a disk that has stopped answering.
var appendBuckets = []int64{
	int64(50 * time.Microsecond), int64(100 * time.Microsecond), int64(250 * time.Microsecond), int64(500 * time.Microsecond),
	int64(time.Millisecond), int64(2500 * time.Microsecond), int64(5 * time.Millisecond), int64(10 * time.Millisecond),
	int64(25 * time.Millisecond), int64(50 * time.Millisecond), int64(100 * time.Millisecond), int64(250 * time.Millisecond),
	int64(time.Second), int64(5 * time.Second),
}

// batchBuckets are the batch size histogram's, up to the log's largest
// batch (512).
var batchBuckets = []int64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}

// toolSeries counts one tool label's decisions and durations with
// atomic adds, which a decision costs and nothing more: the series are
// made from the counts when /metrics is scraped.
type toolSeries struct {
	decisions [len(events)][len(reasons)]atomic.Uint64
	durations [len(outcomes)]histogram
}

// A histogram counts integer observations (nanoseconds, records) in
// buckets with atomic adds, and makes its series when scraped.
type histogram struct {
	bounds  []int64         // upper bounds, ascending
	scale   float64         // from an observation to the series' unit
	buckets []atomic.Uint64 // one per bound, not cumulative, and one above them all
	sum     atomic.Int64
}

func newHistogram(bounds []int64, scale float64) histogram {
	return histogram{bounds: bounds, scale: scale, buckets: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *histogram) observe(v int64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(v)
}

// metric makes the histogram's series, or nil while it counts nothing.
// The count is the buckets' sum, each read once, so that the cumulative
// counts never exceed it while observations go on.
func (h *histogram) metric(desc *prometheus.Desc, labels ...string) prometheus.Metric {
	var count uint64
	cumulative := make(map[float64]uint64, len(h.bounds))
	for i, bound := range h.bounds {
		count += h.buckets[i].Load()
		cumulative[float64(bound)*h.scale] = count
	}
	count += h.buckets[len(h.bounds)].Load()
	if count == 0 {
		return nil
	}
	return prometheus.MustNewConstHistogram(desc, count, float64(h.sum.Load())*h.scale, cumulative, labels...)
}

func newToolSeries() *toolSeries {
	ts := &toolSeries{}
	for o := range ts.durations {
		ts.durations[o] = newHistogram(callBuckets, 1e-9)
	}
	return ts
}

// Metrics are a stack's Prometheus metrics. It is the stack's Observer
// (agentsec.Config.Observer), counting each decision as it is settled;
// Watch adds the stack's audit log, and WatchGateway makes it the MCP
// gateway's Observer (mcpgate.Observer) too.
//
// Names and labels follow Prometheus's conventions and, where one
// exists, OpenTelemetry's semantic conventions for MCP: the tool is the
// gen_ai_tool_name label (gen_ai.tool.name). Every label's values are
// bounded: an event and an outcome, a reason code from a fixed list,
// and at most MaxToolLabels tools; no agent or session ids.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	// tools maps a tool label to its series. The map is replaced, under
	// toolMu, when a label is added, and never changed: a decision finds
	// its series with a plain map read, cheaper than a sync.Map's, and
	// labels are few (MaxToolLabels) and added once each.
	tools     atomic.Pointer[map[string]*toolSeries]
	toolMu    sync.Mutex
	toolCount int         // tools in labels so far, OtherTool not counted
	toolsFull atomic.Bool // MaxToolLabels reached: a new name is OtherTool, without toolMu

	// The gateway's upstreams, as the gateway's Observer.
	upstreams upstreams

	budgetErrors atomic.Uint64 // decisions during which the budget store failed

	// Requests the gateway refused for their caller, by the index of
	// their reason in mcpgate.AuthRefusedReasons (and one for a reason
	// not known here).
	authRefused [8]atomic.Uint64

	// The audit log's appends, once Watch is called.
	appendTook, appendRecords histogram
	appendErrors              atomic.Uint64
}

var (
	decisionsDesc = prometheus.NewDesc("agentsec_decisions_total",
		"Governance decisions settled, by audit event, outcome (allow or deny), reason code and tool. A denial is a decision, not an error.",
		[]string{"event", "outcome", "reason", "gen_ai_tool_name"}, nil)
	durationsDesc = prometheus.NewDesc("agentsec_tool_call_duration_seconds",
		"Time from a governed call's admission to its settling: the tool's run, or the upstream's round trip, and the governance around it.",
		[]string{"outcome", "gen_ai_tool_name"}, nil)
	appendTookDesc = prometheus.NewDesc("agentsec_audit_append_duration_seconds",
		"Time a batch of records took to append, durably, from its first record's arrival: what a call waits for its record.", nil, nil)
	appendRecordsDesc = prometheus.NewDesc("agentsec_audit_append_batch_records",
		"Records in each batch appended to the audit log's store: with many callers, one sync serves many records.", nil, nil)
	appendErrorsDesc = prometheus.NewDesc("agentsec_audit_append_errors_total",
		"Batches the audit log's store failed to append; their calls were denied.", nil, nil)
	budgetErrorsDesc = prometheus.NewDesc("agentsec_budget_store_errors_total",
		"Decisions during which the budget store failed: the call was denied for it, or its slot's release or its tokens' count was not stored.", nil, nil)
)

// NewMetrics returns Metrics with the Go runtime's and the process's
// metrics registered beside agentsec's.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(),
		appendTook: newHistogram(appendBuckets, 1e-9), appendRecords: newHistogram(batchBuckets, 1)}
	m.tools.Store(&map[string]*toolSeries{})
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
	if d.BudgetFailed {
		m.budgetErrors.Add(1)
	}
	if d.Ran {
		ts.durations[outcomeOf(reason)].observe(int64(d.Duration))
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
	if ts, ok := (*m.tools.Load())[tool]; ok {
		return ts
	}
	if tool != OtherTool && m.toolsFull.Load() {
		// An agent inventing names under a pattern rule must not make
		// every decision take the lock.
		tool = OtherTool
		if ts, ok := (*m.tools.Load())[tool]; ok {
			return ts
		}
	}
	m.toolMu.Lock()
	defer m.toolMu.Unlock()
	tools := *m.tools.Load()
	if ts, ok := tools[tool]; ok {
		return ts
	}
	if tool != OtherTool {
		if m.toolCount >= MaxToolLabels {
			tool = OtherTool
			if ts, ok := tools[tool]; ok {
				return ts
			}
		} else {
			m.toolCount++
			m.toolsFull.Store(m.toolCount == MaxToolLabels)
		}
	}
	ts := newToolSeries()
	next := maps.Clone(tools)
	next[tool] = ts
	m.tools.Store(&next)
	return ts
}

// decisionsCollector makes the decisions' series from their counts.
type decisionsCollector struct{ m *Metrics }

// Describe implements prometheus.Collector.
func (c decisionsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- decisionsDesc
	ch <- durationsDesc
	ch <- budgetErrorsDesc
}

// Collect implements prometheus.Collector: a series for each count
// that is not zero.
func (c decisionsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(budgetErrorsDesc, prometheus.CounterValue, float64(c.m.budgetErrors.Load()))
	for tool, ts := range *c.m.tools.Load() {
		for e := range ts.decisions {
			for r := range ts.decisions[e] {
				if n := ts.decisions[e][r].Load(); n > 0 {
					ch <- prometheus.MustNewConstMetric(decisionsDesc, prometheus.CounterValue, float64(n),
						events[e], outcomes[outcomeOf(r)], reasons[r].code, tool)
				}
			}
		}
		for o := range ts.durations {
			if metric := ts.durations[o].metric(durationsDesc, outcomes[o], tool); metric != nil {
				ch <- metric
			}
		}
	}
}

// Watch adds the metrics of stack's audit log: its appends, as they are
// made, and, read at each scrape, its size, the records no checkpoint
// signs yet, the latest checkpoint's age and whether it takes appends.
// It is called once, for the stack whose Observer m is.
func (m *Metrics) Watch(stack *agentsec.Stack) {
	stack.Audit.ObserveAppends(func(records int, took time.Duration, err error) {
		if err != nil {
			m.appendErrors.Add(1)
			return
		}
		m.appendTook.observe(int64(took))
		m.appendRecords.observe(int64(records))
	})
	m.reg.MustRegister(appendsCollector{m},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentsec_audit_log_records",
			Help: "Records in the audit log.",
		}, func() float64 { return float64(stack.Audit.Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "agentsec_audit_unsigned_records",
			Help: "Records no signed checkpoint covers yet: what an outsider could not yet hold the log to.",
		}, func() float64 {
			cp, _ := stack.Audit.LatestCheckpoint()
			return float64(stack.Audit.Size() - min(cp.Size, stack.Audit.Size()))
		}),
		checkpointAge{stack},
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

var checkpointAgeDesc = prometheus.NewDesc("agentsec_audit_checkpoint_age_seconds",
	"Time since this process signed the latest checkpoint; absent until it signs one.", nil, nil)

// checkpointAge is the age of the latest checkpoint the process signed.
type checkpointAge struct{ stack *agentsec.Stack }

// Describe implements prometheus.Collector.
func (c checkpointAge) Describe(ch chan<- *prometheus.Desc) { ch <- checkpointAgeDesc }

// Collect implements prometheus.Collector.
func (c checkpointAge) Collect(ch chan<- prometheus.Metric) {
	if cp, ok := c.stack.Audit.LatestCheckpoint(); ok && !cp.Signed.IsZero() {
		ch <- prometheus.MustNewConstMetric(checkpointAgeDesc, prometheus.GaugeValue, time.Since(cp.Signed).Seconds())
	}
}

var authRefusedDesc = prometheus.NewDesc("agentsec_auth_refused_total",
	"Requests to the MCP gateway refused for their caller, by reason: no token, an invalid one, a valid OAuth token short of a scope or of an agent, an issuer's keys unavailable, or another caller's session. Most are not in the audit log, which anyone could otherwise fill.",
	[]string{"reason"}, nil)

// ObserveAuthRefused implements mcpgate.AuthObserver.
func (m *Metrics) ObserveAuthRefused(reason string) {
	other := len(m.authRefused) - 1
	i := slices.Index(mcpgate.AuthRefusedReasons, reason)
	if i < 0 || i > other {
		i = other
	}
	m.authRefused[i].Add(1)
}

// authCollector makes the refused callers' series: one for each reason,
// from the start, so that a rate can be taken before the first refusal.
type authCollector struct{ m *Metrics }

// Describe implements prometheus.Collector.
func (c authCollector) Describe(ch chan<- *prometheus.Desc) { ch <- authRefusedDesc }

// Collect implements prometheus.Collector.
func (c authCollector) Collect(ch chan<- prometheus.Metric) {
	other := len(c.m.authRefused) - 1
	for i, reason := range mcpgate.AuthRefusedReasons[:min(other, len(mcpgate.AuthRefusedReasons))] {
		ch <- prometheus.MustNewConstMetric(authRefusedDesc, prometheus.CounterValue, float64(c.m.authRefused[i].Load()), reason)
	}
	if n := c.m.authRefused[other].Load(); n > 0 {
		ch <- prometheus.MustNewConstMetric(authRefusedDesc, prometheus.CounterValue, float64(n), "other")
	}
}

// WatchGateway makes m the MCP gateway's Observer, counting what its own
// part of each call and its upstreams' take, whether the upstreams are
// up, and the requests refused for their caller, and adds its sessions,
// read at each scrape. It is called once, before the gateway serves.
func (m *Metrics) WatchGateway(gw *mcpgate.Gateway) {
	gw.Observer = m
	m.reg.MustRegister(&m.upstreams, authCollector{m}, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "agentsec_mcp_sessions",
		Help: "MCP sessions this process holds open (each is a budget session).",
	}, func() float64 { return float64(gw.OpenSessions()) }))
}

// appendsCollector makes the audit log's append series.
type appendsCollector struct{ m *Metrics }

// Describe implements prometheus.Collector.
func (c appendsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- appendTookDesc
	ch <- appendRecordsDesc
	ch <- appendErrorsDesc
}

// Collect implements prometheus.Collector.
func (c appendsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, h := range []struct {
		h    *histogram
		desc *prometheus.Desc
	}{{&c.m.appendTook, appendTookDesc}, {&c.m.appendRecords, appendRecordsDesc}} {
		if metric := h.h.metric(h.desc); metric != nil {
			ch <- metric
		}
	}
	ch <- prometheus.MustNewConstMetric(appendErrorsDesc, prometheus.CounterValue, float64(c.m.appendErrors.Load()))
}

// ServeHTTP serves the metrics in Prometheus's exposition formats.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.handler.ServeHTTP(w, r)
}
