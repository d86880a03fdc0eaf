package console_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// metricsStack is a stack whose decisions metrics counts, served on srv:
// agent "a" is public; "read" needs public, "write" privileged, and with
// anyTool every other tool needs public.
func metricsStack(t *testing.T, calls int64, anyTool bool) (*agentsec.Stack, *audittest.FailingStore, *httptest.Server) {
	t.Helper()
	store := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	rules := []trust.Rule{{Tool: "read", Level: "public"}, {Tool: "write", Level: "privileged"}}
	if anyTool {
		rules = append(rules, trust.Rule{Tool: "*", Level: "public"})
	}
	metrics := console.NewMetrics()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{Rules: rules, Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:    agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: calls, Store: budget.NewMemoryStore()},
		Audit:     agentsec.AuditConfig{Store: store}, AuditNamespace: "metrics",
		Observer: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	metrics.Watch(stack)
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack, Metrics: metrics}))
	t.Cleanup(srv.Close)
	return stack, store, srv
}

// scrape reads /metrics as Prometheus would.
func scrape(t *testing.T, srv *httptest.Server) map[string]*dto.MetricFamily {
	t.Helper()
	status, body := get(t, srv, "/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics = %d %q", status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not in the exposition format: %v\n%s", err, body)
	}
	return families
}

// series returns each series of a family by its labels, "k=v,k=v" in
// the order the exposition gives them (sorted by name).
func series(families map[string]*dto.MetricFamily, name string) map[string]*dto.Metric {
	out := map[string]*dto.Metric{}
	if f := families[name]; f != nil {
		for _, m := range f.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(labels, ",")] = m
		}
	}
	return out
}

func gauge(t *testing.T, families map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f := families[name]
	if f == nil || len(f.Metric) != 1 {
		t.Fatalf("no one %s in /metrics", name)
	}
	return f.Metric[0].GetGauge().GetValue()
}

// After known traffic — calls allowed, denied by the trust gate and by
// the budget, refused, and not recorded while the audit store fails —
// /metrics counts each decision exactly once, under its reason code; a
// denial is a decision, never an error.
func TestMetricsCountDecisionsExactly(t *testing.T) {
	stack, store, srv := metricsStack(t, 3, false)
	ctx := context.Background()
	ok := func(context.Context) (int64, error) { return 2, nil }
	guard := func(session, tool string) error {
		return stack.Guard(ctx, agentsec.Request{Agent: "a", Session: session, Tool: tool}, ok)
	}
	for range 2 {
		if err := guard("s1", "read"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 { // the fourth is over the session's 3 calls
		if err := guard("s2", "read"); (err != nil) != (i == 3) {
			t.Fatalf("call %d in s2: %v", i+1, err)
		}
	}
	if err := guard("s1", "write"); !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("write: %v", err)
	}
	if err := guard("s1", "no-rule-covers-me"); !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("a tool no rule covers: %v", err)
	}
	if err := stack.Refuse(ctx, agentsec.Request{Agent: "a", Session: "s1", Tool: "read"}, "not offered"); !errors.Is(err, agentsec.ErrInvalidRequest) {
		t.Fatalf("Refuse: %v", err)
	}
	size := stack.Audit.Size()
	families := scrape(t, srv)
	// Every record since Watch — all but the configured assignment's,
	// recorded as the stack was built — came in a batch it saw.
	batches := series(families, "agentsec_audit_append_batch_records")[""].GetHistogram()
	took := series(families, "agentsec_audit_append_duration_seconds")[""].GetHistogram()
	if batches.GetSampleSum() != float64(size-1) || took.GetSampleCount() != batches.GetSampleCount() || took.GetSampleSum() <= 0 {
		t.Errorf("appends: %v records in %d batches, durations of %d; want %d records, a duration for each batch",
			batches.GetSampleSum(), batches.GetSampleCount(), took.GetSampleCount(), size-1)
	}
	if got := gauge(t, families, "agentsec_audit_log_records"); got != float64(size) {
		t.Errorf("agentsec_audit_log_records = %v, want %d", got, size)
	}
	if got := gauge(t, families, "agentsec_audit_log_up"); got != 1 {
		t.Errorf("agentsec_audit_log_up = %v, want 1", got)
	}

	store.Fail.Store(true)
	if err := guard("s3", "read"); !errors.Is(err, agentsec.ErrAuditUnavailable) { // ran, not recorded
		t.Fatalf("a call whose record fails: %v", err)
	}
	if err := guard("s3", "read"); !errors.Is(err, agentsec.ErrAuditUnavailable) { // denied at once
		t.Fatalf("a call while the log is failing: %v", err)
	}
	families = scrape(t, srv)
	if got := gauge(t, families, "agentsec_audit_log_up"); got != 0 {
		t.Errorf("agentsec_audit_log_up while the store fails = %v, want 0", got)
	}
	if got := families["agentsec_audit_append_errors_total"].GetMetric()[0].GetCounter().GetValue(); got != 2 {
		t.Errorf("agentsec_audit_append_errors_total = %v, want 2", got)
	}

	want := map[string]float64{
		"event=tool.call,gen_ai_tool_name=read,outcome=allow,reason=allowed":          5,
		"event=tool.call,gen_ai_tool_name=read,outcome=deny,reason=budget_exceeded":   1,
		"event=tool.call,gen_ai_tool_name=write,outcome=deny,reason=trust_denied":     1,
		"event=tool.call,gen_ai_tool_name=other,outcome=deny,reason=trust_denied":     1,
		"event=tool.call,gen_ai_tool_name=other,outcome=deny,reason=invalid_request":  1,
		"event=tool.call,gen_ai_tool_name=read,outcome=deny,reason=audit_unavailable": 2,
	}
	got := series(families, "agentsec_decisions_total")
	for labels, n := range want {
		if m := got[labels]; m == nil || m.GetCounter().GetValue() != n {
			t.Errorf("agentsec_decisions_total{%s} = %v, want %v", labels, m.GetCounter().GetValue(), n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("agentsec_decisions_total has %d series, want %d: %v", len(got), len(want), got)
	}
	// Only calls that ran have a duration: the five allowed, and the one
	// whose record failed after it ran.
	durations := series(families, "agentsec_tool_call_duration_seconds")
	for labels, n := range map[string]uint64{"gen_ai_tool_name=read,outcome=allow": 5, "gen_ai_tool_name=read,outcome=deny": 1} {
		if m := durations[labels]; m == nil || m.GetHistogram().GetSampleCount() != n {
			t.Errorf("agentsec_tool_call_duration_seconds{%s} count = %v, want %d", labels, m.GetHistogram().GetSampleCount(), n)
		}
	}
	if len(durations) != 2 {
		t.Errorf("agentsec_tool_call_duration_seconds has %d series, want 2", len(durations))
	}
	if families["go_goroutines"] == nil || families["process_cpu_seconds_total"] == nil {
		t.Error("no Go runtime or process metrics")
	}
}

// An agent picks the tool names it sends: however many it sends, the
// tool label takes at most MaxToolLabels values and "other", and every
// decision is still counted — from goroutines racing each other.
func TestMetricsToolLabelsAreBounded(t *testing.T) {
	stack, _, srv := metricsStack(t, 1_000_000, true)
	const workers, each = 8, 100
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				req := agentsec.Request{Agent: "a", Session: fmt.Sprintf("s%d", w), Tool: fmt.Sprintf("tool-%d-%d", w, i)}
				if err := stack.Guard(context.Background(), req, func(context.Context) (int64, error) { return 0, nil }); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var total float64
	tools := map[string]bool{}
	for _, m := range series(scrape(t, srv), "agentsec_decisions_total") {
		total += m.GetCounter().GetValue()
		for _, l := range m.Label {
			if l.GetName() == "gen_ai_tool_name" {
				tools[l.GetValue()] = true
			}
		}
	}
	if total != workers*each {
		t.Errorf("%v decisions counted, want %d", total, workers*each)
	}
	if len(tools) != console.MaxToolLabels+1 || !tools[console.OtherTool] {
		t.Errorf("%d tool label values, want %d and %q", len(tools), console.MaxToolLabels, console.OtherTool)
	}
}

// /metrics says how much of the log no signed checkpoint covers yet,
// and how old the latest checkpoint this process signed is.
func TestMetricsCheckpoints(t *testing.T) {
	skey, _, err := audit.GenerateKey("metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics := console.NewMetrics()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate:      agentsec.TrustGateConfig{ToolName: "read", RequiredLevel: "public", Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 1000},
		AuditNamespace: "metrics",
		Audit:          agentsec.AuditConfig{SignerKey: skey, CheckpointEvery: 1000, CheckpointInterval: time.Hour},
		Observer:       metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	metrics.Watch(stack)
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack, Metrics: metrics}))
	defer srv.Close()
	ctx := context.Background()
	calls := func(n int) {
		for range n {
			if err := stack.Guard(ctx, agentsec.Request{Agent: "a", Session: "s", Tool: "read"}, func(context.Context) (int64, error) { return 1, nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
	calls(3)
	families := scrape(t, srv)
	if got, want := gauge(t, families, "agentsec_audit_unsigned_records"), float64(stack.Audit.Size()); got != want {
		t.Errorf("unsigned records before any checkpoint = %v, want %v", got, want)
	}
	if families["agentsec_audit_checkpoint_age_seconds"] != nil {
		t.Error("a checkpoint age before any checkpoint")
	}
	if _, err := stack.Audit.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	calls(2)
	families = scrape(t, srv)
	if got := gauge(t, families, "agentsec_audit_unsigned_records"); got != 2 {
		t.Errorf("unsigned records 2 calls after a checkpoint = %v, want 2", got)
	}
	if age := gauge(t, families, "agentsec_audit_checkpoint_age_seconds"); age < 0 || age > 60 {
		t.Errorf("checkpoint age = %v s, want the few ms since it was signed", age)
	}
}

// The gateway's Observer: its own part of each call and the upstream's,
// by upstream, and each upstream's state.
func TestMetricsUpstreams(t *testing.T) {
	metrics := console.NewMetrics()
	metrics.WatchGateway(&mcpgate.Gateway{})
	srv := httptest.NewServer(metrics)
	defer srv.Close()
	metrics.ObserveUpstream("files", true)
	metrics.ObserveUpstream("search", true)
	metrics.ObserveUpstream("search", false) // it broke
	metrics.ObserveToolCall("files", 40*time.Microsecond, 2*time.Millisecond)
	metrics.ObserveToolCall("files", 60*time.Microsecond, 3*time.Millisecond)
	families := scrape(t, srv)
	up := series(families, "agentsec_upstream_up")
	failures := series(families, "agentsec_upstream_failures_total")
	if up["upstream=files"].GetGauge().GetValue() != 1 || up["upstream=search"].GetGauge().GetValue() != 0 ||
		failures["upstream=files"].GetCounter().GetValue() != 0 || failures["upstream=search"].GetCounter().GetValue() != 1 {
		t.Errorf("upstream_up = %v, failures = %v; want files up, search down after one failure", up, failures)
	}
	added := series(families, "agentsec_gateway_added_duration_seconds")["upstream=files"].GetHistogram()
	exchange := series(families, "agentsec_upstream_duration_seconds")["upstream=files"].GetHistogram()
	if added.GetSampleCount() != 2 || added.GetSampleSum() < 99e-6 || added.GetSampleSum() > 101e-6 ||
		exchange.GetSampleCount() != 2 || exchange.GetSampleSum() < 4.99e-3 || exchange.GetSampleSum() > 5.01e-3 {
		t.Errorf("added = %v, exchange = %v; want 2 calls of 100 µs and 5 ms in all", added, exchange)
	}
	if got := gauge(t, families, "agentsec_mcp_sessions"); got != 0 {
		t.Errorf("agentsec_mcp_sessions = %v", got)
	}
}

// Each request the gateway refused for its caller is counted under its
// reason; every reason has its series from the start.
func TestMetricsAuthRefusals(t *testing.T) {
	metrics := console.NewMetrics()
	metrics.WatchGateway(&mcpgate.Gateway{})
	srv := httptest.NewServer(metrics)
	defer srv.Close()
	for reason, n := range map[string]int{mcpgate.AuthRefusedNoToken: 3, mcpgate.AuthRefusedInvalidToken: 2, mcpgate.AuthRefusedNotSessionOwner: 1, "made-up": 1} {
		for range n {
			metrics.ObserveAuthRefused(reason)
		}
	}
	got := series(scrape(t, srv), "agentsec_auth_refused_total")
	want := map[string]float64{"no_token": 3, "invalid_token": 2, "insufficient_scope": 0, "no_agent": 0, "keys_unavailable": 0, "not_session_owner": 1, "other": 1}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	for reason, n := range want {
		if m := got["reason="+reason]; m == nil || m.GetCounter().GetValue() != n {
			t.Errorf("reason %s: %v, want %v", reason, m, n)
		}
	}
}

// brokenBudgets is a budget store that fails to reserve for the session
// "no-reserve" and to count tokens for "no-commit".
type brokenBudgets struct{ budget.Store }

func (s brokenBudgets) Reserve(ctx context.Context, session string) (budget.State, error) {
	if session == "no-reserve" {
		return budget.State{}, errors.New("connection refused")
	}
	return s.Store.Reserve(ctx, session)
}

func (s brokenBudgets) CommitWithin(ctx context.Context, session string, tokens int64) (budget.State, error) {
	if session == "no-commit" {
		return budget.State{}, errors.New("connection refused")
	}
	return s.Store.CommitWithin(ctx, session, tokens)
}

// Each decision during which the budget store failed is counted once,
// whether it denied the call or only lost its count.
func TestMetricsBudgetStoreErrors(t *testing.T) {
	metrics := console.NewMetrics()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate:      agentsec.TrustGateConfig{ToolName: "read", RequiredLevel: "public", Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 1000, Store: brokenBudgets{budget.NewMemoryStore()}},
		AuditNamespace: "metrics",
		Observer:       metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	srv := httptest.NewServer(metrics)
	defer srv.Close()
	ok := func(context.Context) (int64, error) { return 3, nil }
	for _, session := range []string{"fine", "no-reserve", "no-commit", "fine"} {
		err := stack.Guard(context.Background(), agentsec.Request{Agent: "a", Session: session, Tool: "read"}, ok)
		if (err != nil) != (session != "fine") {
			t.Fatalf("a call in session %s: %v", session, err)
		}
	}
	families := scrape(t, srv)
	if got := families["agentsec_budget_store_errors_total"].GetMetric()[0].GetCounter().GetValue(); got != 2 {
		t.Errorf("agentsec_budget_store_errors_total = %v, want 2", got)
	}
	if got := series(families, "agentsec_decisions_total")["event=tool.call,gen_ai_tool_name=read,outcome=deny,reason=budget_unavailable"].GetCounter().GetValue(); got != 2 {
		t.Errorf("decisions denied for the budget store = %v, want 2", got)
	}
}

// The admin listener's endpoints are read with GET: anything else is
// refused, and changes nothing.
func TestAdminEndpointsRefuseOtherMethods(t *testing.T) {
	stack, _, srv := metricsStack(t, 10, false)
	for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader("x=1"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
				t.Errorf("%s %s = %d (Allow %q), want 405 naming GET", method, path, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	if n := stack.Audit.Size(); n != 1 { // the configured assignment's record
		t.Errorf("the log holds %d records, want 1", n)
	}
}
