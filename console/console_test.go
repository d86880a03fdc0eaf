package console_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/trust"
)

// failingBudgets is a budget store that can be made to fail.
type failingBudgets struct {
	budget.Store
	fail bool
}

func (s *failingBudgets) Get(ctx context.Context, session string) (budget.State, error) {
	if s.fail {
		return budget.State{}, errors.New("connection refused")
	}
	return s.Store.Get(ctx, session)
}

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// /readyz turns unready, naming the audit log and its cause, when the
// log's store fails; and ready again when the store recovers, even with
// no call to show it — the probe's own append does.
func TestReadyz(t *testing.T) {
	auditStore := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	budgets := &failingBudgets{Store: budget.NewMemoryStore()}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate:      agentsec.TrustGateConfig{ToolName: "t", RequiredLevel: "public", Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10, CallLimit: 10, Store: budgets},
		AuditNamespace: "console",
		Audit:          agentsec.AuditConfig{Store: auditStore},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack}))
	defer srv.Close()

	if status, body := get(t, srv, "/healthz"); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", status, body)
	}
	if status, body := get(t, srv, "/readyz"); status != http.StatusOK || body != "audit log: ok\nbudget store: ok\n" {
		t.Errorf("/readyz of a healthy stack = %d %q", status, body)
	}

	auditStore.Fail.Store(true)
	call := func(context.Context) (int64, error) { return 1, nil }
	if err := stack.Guard(context.Background(), agentsec.Request{Agent: "a", Session: "s", Tool: "t"}, call); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Fatalf("a call while the audit store fails: %v", err)
	}
	status, body := get(t, srv, "/readyz")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "audit log: audit: audit log unavailable") ||
		!strings.Contains(body, audittest.ErrInjected.Error()) || !strings.Contains(body, "budget store: ok") {
		t.Errorf("/readyz while the audit store fails = %d %q", status, body)
	}

	auditStore.Fail.Store(false)
	if status, body := get(t, srv, "/readyz"); status != http.StatusOK {
		t.Errorf("/readyz once the store recovers, with no call since = %d %q", status, body)
	}
	if err := stack.Guard(context.Background(), agentsec.Request{Agent: "a", Session: "s", Tool: "t"}, call); err != nil {
		t.Errorf("a call after the recovery: %v", err)
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: console.EventProbe})
	if err != nil || len(page.Records) != 1 {
		t.Errorf("probe records: %d, %v; want the one that recovered the log", len(page.Records), err)
	}

	budgets.fail = true
	if status, body := get(t, srv, "/readyz"); status != http.StatusServiceUnavailable || body != "audit log: ok\nbudget store: connection refused\n" {
		t.Errorf("/readyz while the budget store fails = %d %q", status, body)
	}
	if status, _ := get(t, srv, "/nothing"); status != http.StatusNotFound {
		t.Errorf("an unknown path: %d", status)
	}
	if _, err := stack.Audit.Verify(context.Background()); err != nil {
		t.Error(err)
	}
}
