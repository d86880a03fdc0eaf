package agentsec_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/trust"
)

// TestGuardSpentCallKeepsItsSlot checks the rule a gateway needs: a call
// that reached its tool is spent, whatever happened after — its slot is
// not given back, the tokens it reports count, and the record says what
// happened. Only a failure before the tool ran gives the slot back.
func TestGuardSpentCallKeepsItsSlot(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2, 1000)
	req := agentsec.Request{Agent: "alice", Session: "spent", Tool: "write"}
	cancelled := errors.New("sent, then cancelled by the client")
	err := f.stack.Guard(ctx, req, func(context.Context) (int64, error) { return 7, agentsec.Spent(cancelled) })
	if !errors.Is(err, cancelled) {
		t.Fatalf("Guard = %v, want the tool's error", err)
	}
	if _, ok := errors.AsType[*agentsec.SpentError](err); !ok {
		t.Errorf("Guard = %T, want a *SpentError", err)
	}
	if got, want := f.usage(t, "spent"), (budget.Usage{Calls: 1, Tokens: 7}); got != want {
		t.Errorf("usage after a spent call = %+v, want %+v", got, want)
	}
	rec := f.lastRecord(t)
	if rec.Outcome != audit.OutcomeAllowed || rec.Reason != cancelled.Error() || rec.Tokens != 7 {
		t.Errorf("record = %s %q %d tokens, want allow %q 7 tokens", rec.Outcome, rec.Reason, rec.Tokens, cancelled)
	}

	// A plain error means the tool never ran: the slot comes back.
	never := errors.New("no upstream serves it")
	if err := f.stack.Guard(ctx, req, func(context.Context) (int64, error) { return 0, never }); !errors.Is(err, never) {
		t.Fatalf("Guard = %v", err)
	}
	if got, want := f.usage(t, "spent"), (budget.Usage{Calls: 1, Tokens: 7}); got != want {
		t.Errorf("usage after a call that never ran = %+v, want %+v", got, want)
	}
	// One slot left, then none: the spent call counted.
	if err := f.stack.Guard(ctx, req, tokens(1)); err != nil {
		t.Fatal(err)
	}
	if err := f.stack.Guard(ctx, req, tokens(1)); !errors.Is(err, agentsec.ErrBudgetExceeded) {
		t.Fatalf("third call = %v, want %v", err, agentsec.ErrBudgetExceeded)
	}
}

func newCeilingStack(t *testing.T, tokenLimit, callTokens int64) *agentsec.Stack {
	t.Helper()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{ToolName: "t", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: tokenLimit, CallLimit: 1 << 20, CallTokenLimit: callTokens},
		AuditNamespace: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	return stack
}

// TestGuardWithholdsResultOverCallTokenLimit checks the per-call ceiling:
// a bigger result is withheld, its slot spent, no tokens counted, and the
// record a denial that says why and how big it was.
func TestGuardWithholdsResultOverCallTokenLimit(t *testing.T) {
	ctx := context.Background()
	stack := newCeilingStack(t, 1000, 100)
	req := agentsec.Request{Agent: "a", Session: "s", Tool: "t"}
	if err := stack.Guard(ctx, req, tokens(100)); err != nil {
		t.Fatalf("a result of exactly the ceiling: %v", err)
	}
	err := stack.Guard(ctx, req, tokens(101))
	if !errors.Is(err, agentsec.ErrBudgetExceeded) {
		t.Fatalf("a result over the ceiling: %v, want %v", err, agentsec.ErrBudgetExceeded)
	}
	st, _ := stack.Budget.Usage(ctx, "s")
	if want := (budget.Usage{Calls: 2, Tokens: 100}); st.Used != want {
		t.Errorf("usage = %+v, want %+v", st.Used, want)
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Session: "s", Outcome: audit.OutcomeDenied})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("denied records: %d, %v", len(page.Records), err)
	}
	if rec := page.Records[0]; rec.Attrs["withheld_tokens"] != "101" || rec.Tokens != 0 {
		t.Errorf("withheld record: tokens %d, attrs %v", rec.Tokens, rec.Attrs)
	}
}

// TestGuardTokenOvershootIsBounded runs many calls at once on one session
// whose results together are far over its token limit: with results
// counted only while the session is under its limit, the tokens counted
// pass the limit by less than one result, and every result that was not
// counted is withheld and recorded so.
func TestGuardTokenOvershootIsBounded(t *testing.T) {
	for _, tt := range []struct {
		name              string
		callTokens, limit int64
		result            int64
	}{
		{"no ceiling", 0, 1000, 97},
		{"ceiling", 50, 1000, 97}, // every result over the ceiling: nothing counted
		{"ceiling above result", 200, 1000, 97},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			stack := newCeilingStack(t, tt.limit, tt.callTokens)
			req := agentsec.Request{Agent: "a", Session: "s", Tool: "t"}
			const calls = 200
			var delivered, withheld atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			release := make(chan struct{})
			var running sync.WaitGroup
			running.Add(calls)
			for range calls {
				wg.Go(func() {
					<-start
					err := stack.Guard(ctx, req, func(context.Context) (int64, error) {
						// Every call is reserved before any result counts:
						// the worst case of concurrency.
						running.Done()
						<-release
						return tt.result, nil
					})
					switch {
					case err == nil:
						delivered.Add(tt.result)
					case errors.Is(err, agentsec.ErrBudgetExceeded):
						withheld.Add(1)
					default:
						t.Errorf("Guard = %v", err)
					}
				})
			}
			close(start)
			running.Wait()
			close(release)
			wg.Wait()
			st, err := stack.Budget.Usage(ctx, "s")
			if err != nil {
				t.Fatal(err)
			}
			bound := tt.limit - 1 + tt.result
			if tt.callTokens > 0 {
				bound = tt.limit - 1 + min(tt.result, tt.callTokens)
				if tt.result > tt.callTokens {
					bound = 0
				}
			}
			if st.Used.Tokens > bound || st.Used.Tokens != delivered.Load() {
				t.Errorf("tokens counted %d, delivered %d; want equal and at most %d", st.Used.Tokens, delivered.Load(), bound)
			}
			if st.Used.Calls != calls {
				t.Errorf("calls counted %d, want %d: every call ran", st.Used.Calls, calls)
			}
			page, err := stack.Audit.Query(ctx, audit.Filter{Session: "s", Outcome: audit.OutcomeDenied, Limit: audit.MaxLimit})
			if err != nil || int64(len(page.Records)) != withheld.Load() {
				t.Errorf("%d denied records (%v), %d results withheld", len(page.Records), err, withheld.Load())
			}
		})
	}
}

// TestRefuseRecordsTheRefusal checks that a call refused before the gate
// is recorded as a denial, even with a malformed request.
func TestRefuseRecordsTheRefusal(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 10, 100)
	err := f.stack.Refuse(ctx, agentsec.Request{Agent: "alice", Session: "r", Tool: "admin.wipe"}, "sent as a notification")
	if !errors.Is(err, agentsec.ErrInvalidRequest) {
		t.Fatalf("Refuse = %v, want %v", err, agentsec.ErrInvalidRequest)
	}
	rec := f.lastRecord(t)
	if rec.Outcome != audit.OutcomeDenied || rec.Tool != "admin.wipe" || rec.Reason != "sent as a notification" {
		t.Errorf("record = %+v", rec)
	}
	if err := f.stack.Refuse(ctx, agentsec.Request{Agent: "alice", Session: "r", Tool: "bad\xff"}, "x"); !errors.Is(err, agentsec.ErrInvalidRequest) {
		t.Fatalf("Refuse of a malformed request = %v", err)
	}
	if rec := f.lastRecord(t); rec.Outcome != audit.OutcomeDenied || rec.Tool != "bad\uFFFD" {
		t.Errorf("record of a malformed refusal = %+v", rec)
	}
	if got := f.usage(t, "r"); got != (budget.Usage{}) {
		t.Errorf("a refusal spent %+v", got)
	}
}

// TestDeliverResultCountsOnce checks the rules of a result delivered
// after its call: counted within the limit, recorded, withheld past it.
func TestDeliverResultCountsOnce(t *testing.T) {
	ctx := context.Background()
	stack := newCeilingStack(t, 100, 80)
	req := agentsec.Request{Agent: "a", Session: "d", Tool: "t"}
	if err := stack.Guard(ctx, req, tokens(0)); err != nil { // the task's receipt
		t.Fatal(err)
	}
	if err := stack.DeliverResult(ctx, req, 81); !errors.Is(err, agentsec.ErrBudgetExceeded) {
		t.Fatalf("over the ceiling: %v", err)
	}
	if err := stack.DeliverResult(ctx, req, 70); err != nil {
		t.Fatalf("within: %v", err)
	}
	if err := stack.DeliverResult(ctx, req, 40); err != nil {
		t.Fatalf("crossing the limit: %v", err)
	}
	if err := stack.DeliverResult(ctx, req, 1); !errors.Is(err, agentsec.ErrBudgetExceeded) {
		t.Fatalf("past the limit: %v", err)
	}
	st, _ := stack.Budget.Usage(ctx, "d")
	if want := (budget.Usage{Calls: 1, Tokens: 110}); st.Used != want {
		t.Errorf("usage = %+v, want %+v", st.Used, want)
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Session: "d", Event: agentsec.EventToolResult, Limit: 10})
	if err != nil || len(page.Records) != 4 {
		t.Fatalf("tool.result records: %d, %v", len(page.Records), err)
	}
	var allowed int
	for _, r := range page.Records {
		if r.Outcome == audit.OutcomeAllowed {
			allowed++
		}
	}
	if allowed != 2 {
		t.Errorf("%d delivered results recorded, want 2", allowed)
	}
}

// A task's result is delivered only while its agent still holds the
// tool's level: revoked meanwhile, the result is withheld.
func TestDeliverResultRechecksTrust(t *testing.T) {
	ctx := context.Background()
	stack := newCeilingStack(t, 1000, 0)
	req := agentsec.Request{Agent: "a", Session: "t", Tool: "t"}
	if err := stack.Guard(ctx, req, tokens(0)); err != nil {
		t.Fatal(err)
	}
	if err := stack.TrustGate.Revoke(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	if err := stack.DeliverResult(ctx, req, 10); !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("a result for an agent whose level was revoked: %v, want %v", err, agentsec.ErrTrustDenied)
	}
	if st, _ := stack.Budget.Usage(ctx, "t"); st.Used.Tokens != 0 {
		t.Errorf("a withheld result counted %d tokens", st.Used.Tokens)
	}
}

// A spent call's answer is under the budget's rules too: an error's text
// over the per-call ceiling is withheld, and recorded so.
func TestGuardSpentAnswerOverCeilingWithheld(t *testing.T) {
	ctx := context.Background()
	stack := newCeilingStack(t, 1000, 10)
	req := agentsec.Request{Agent: "a", Session: "w", Tool: "t"}
	failed := errors.New("sent; the MCP server answered with an error")
	err := stack.Guard(ctx, req, func(context.Context) (int64, error) { return 500, agentsec.Spent(failed) })
	if !errors.Is(err, agentsec.ErrBudgetExceeded) || !errors.Is(err, failed) {
		t.Fatalf("Guard = %v, want a withheld answer that also names the failure", err)
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Session: "w"})
	if err != nil || len(page.Records) != 1 {
		t.Fatal(len(page.Records), err)
	}
	rec := page.Records[0]
	if rec.Outcome != audit.OutcomeDenied || rec.Attrs["withheld_tokens"] != "500" || rec.Tokens != 0 ||
		!strings.HasPrefix(rec.Reason, "result withheld") || !strings.HasSuffix(rec.Reason, failed.Error()) {
		t.Errorf("record = %s %q %d tokens %v", rec.Outcome, rec.Reason, rec.Tokens, rec.Attrs)
	}
	if st, _ := stack.Budget.Usage(ctx, "w"); st.Used.Calls != 1 {
		t.Errorf("calls used %d, want 1: the call ran", st.Used.Calls)
	}
}

// uncountedStore is a memory budget store whose token counts fail, as a
// PostgreSQL store's do on a timeout or a dropped connection.
type uncountedStore struct{ *budget.MemoryStore }

func (uncountedStore) CommitWithin(context.Context, string, int64) (budget.State, error) {
	return budget.State{}, errors.New("connection reset")
}

// TestGuardUncountedAnswerWithheld: when a call's tokens can't be counted,
// what it answered is withheld — a result, and an error's text alike (a
// gateway relays an MCP server's error answer as it would a result) — and
// the record says so: a denial, with the size withheld. The slot stays
// spent, for the call ran.
func TestGuardUncountedAnswerWithheld(t *testing.T) {
	ctx := context.Background()
	mem := budget.NewMemoryStore()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{ToolName: "t", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "a", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 100, CallLimit: 10, Store: uncountedStore{mem}},
		AuditNamespace: "uncounted",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	req := agentsec.Request{Agent: "a", Session: "u", Tool: "t"}
	failed := errors.New("sent; the MCP server answered with an error")
	for _, fn := range []agentsec.ToolFunc{
		func(context.Context) (int64, error) { return 50, nil },
		func(context.Context) (int64, error) { return 50, agentsec.Spent(failed) },
	} {
		if err := stack.Guard(ctx, req, fn); !errors.Is(err, agentsec.ErrBudgetUnavailable) {
			t.Errorf("Guard = %v, want the answer withheld (ErrBudgetUnavailable)", err)
		}
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Session: "u"})
	if err != nil || len(page.Records) != 2 {
		t.Fatal(len(page.Records), err)
	}
	for _, rec := range page.Records {
		if rec.Outcome != audit.OutcomeDenied || rec.Attrs["withheld_tokens"] != "50" || rec.Tokens != 0 ||
			!strings.HasPrefix(rec.Reason, "result withheld") || rec.Attrs["budget_error"] == "" {
			t.Errorf("record = %s %q %d tokens %v", rec.Outcome, rec.Reason, rec.Tokens, rec.Attrs)
		}
	}
	if st, _ := mem.Get(ctx, "u"); st.Used.Calls != 2 {
		t.Errorf("calls used %d, want 2: both calls ran", st.Used.Calls)
	}
}
