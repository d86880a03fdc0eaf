package agentsec_test

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/trust"
)

type fixture struct {
	stack *agentsec.Stack
	audit *audittest.FailingStore
}

func newFixture(t *testing.T, calls, tokens int64) *fixture {
	t.Helper()
	store := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{
				{Tool: "read", Level: "public"},
				{Tool: "write", Level: "verified"},
				{Tool: "admin.*", Level: "privileged"},
			},
			Agents: []trust.Assignment{
				{Agent: "alice", Level: "verified"},
				{Agent: "bob", Level: "public"},
			},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: tokens, CallLimit: calls},
		AuditNamespace: "test",
		Audit:          agentsec.AuditConfig{Store: store},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	return &fixture{stack: stack, audit: store}
}

// lastRecord returns the newest audit record.
func (f *fixture) lastRecord(t *testing.T) audit.Record {
	t.Helper()
	size := f.stack.Audit.Size()
	page, err := f.stack.Audit.Query(context.Background(), audit.Filter{Cursor: strconv.FormatUint(size-1, 10)})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("reading last record: %v, %d records", err, len(page.Records))
	}
	return page.Records[0]
}

func (f *fixture) usage(t *testing.T, session string) budget.Usage {
	t.Helper()
	st, err := f.stack.Budget.CheckBudget(context.Background(), session)
	if err != nil {
		t.Fatal(err)
	}
	return st.Used
}

func TestGuardOneRecordPerCall(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		req         agentsec.Request
		fn          agentsec.ToolFunc
		wantErr     error // matched with errors.Is; nil means success
		wantRan     bool
		wantOutcome audit.Outcome
		wantReason  string // prefix
		wantUsed    budget.Usage
		wantTokens  int64
	}{
		{
			name: "allowed", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
			fn: tokens(7), wantRan: true, wantOutcome: audit.OutcomeAllowed,
			wantReason: "assigned level meets", wantUsed: budget.Usage{Calls: 1, Tokens: 7}, wantTokens: 7,
		},
		{
			name: "trust denied", req: agentsec.Request{Agent: "bob", Session: "s", Tool: "write"},
			fn: tokens(7), wantErr: agentsec.ErrTrustDenied, wantOutcome: audit.OutcomeDenied,
			wantReason: "assigned level is below",
		},
		{
			name: "unassigned agent", req: agentsec.Request{Agent: "mallory", Session: "s", Tool: "read"},
			fn: tokens(7), wantErr: agentsec.ErrTrustDenied, wantOutcome: audit.OutcomeDenied,
			wantReason: "agent has no assigned trust level",
		},
		{
			name: "tool without rule", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "format-disk"},
			fn: tokens(7), wantErr: agentsec.ErrTrustDenied, wantOutcome: audit.OutcomeDenied,
			wantReason: "no trust rule covers the tool",
		},
		{
			name: "pattern rule", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "admin.reboot"},
			fn: tokens(7), wantErr: agentsec.ErrTrustDenied, wantOutcome: audit.OutcomeDenied,
			wantReason: "assigned level is below",
		},
		{
			name: "tool fails", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
			fn: func(context.Context) (int64, error) { return 5, errTool }, wantErr: errTool, wantRan: true,
			wantOutcome: audit.OutcomeAllowed, wantReason: "tool failed: boom",
		},
		{
			name: "negative tokens", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
			fn: tokens(-1), wantErr: budget.ErrInvalidTokens, wantRan: true, wantOutcome: audit.OutcomeAllowed,
			wantReason: `agentsec: tool "write" reported -1 tokens`, wantUsed: budget.Usage{Calls: 1},
		},
		{
			name: "empty session", req: agentsec.Request{Agent: "alice", Tool: "write"},
			fn: tokens(7), wantErr: agentsec.ErrInvalidRequest, wantOutcome: audit.OutcomeDenied,
			wantReason: "invalid request: budget: invalid session id",
		},
		{
			name: "empty agent", req: agentsec.Request{Session: "s", Tool: "write"},
			fn: tokens(7), wantErr: agentsec.ErrInvalidRequest, wantOutcome: audit.OutcomeDenied,
			wantReason: "invalid request: empty agent id",
		},
		{
			name: "invalid UTF-8 tool", req: agentsec.Request{Agent: "alice", Session: "s", Tool: "wr\xffite"},
			fn: tokens(7), wantErr: agentsec.ErrInvalidRequest, wantOutcome: audit.OutcomeDenied,
			wantReason: "invalid request",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 10, 1000)
			before := f.stack.Audit.Size()
			ran := false
			err := f.stack.Guard(ctx, tt.req, func(ctx context.Context) (int64, error) {
				ran = true
				return tt.fn(ctx)
			})
			switch {
			case tt.wantErr == nil && err != nil:
				t.Errorf("Guard error = %v, want nil", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("Guard error = %v, want one matching %v", err, tt.wantErr)
			}
			if tt.wantErr != nil && tt.wantOutcome == audit.OutcomeDenied {
				if _, ok := errors.AsType[*agentsec.DeniedError](err); !ok {
					t.Errorf("Guard error %T is not a *DeniedError", err)
				}
			}
			if ran != tt.wantRan {
				t.Errorf("tool ran = %v, want %v", ran, tt.wantRan)
			}
			if got := f.stack.Audit.Size() - before; got != 1 {
				t.Fatalf("Guard appended %d records, want exactly 1", got)
			}
			rec := f.lastRecord(t)
			if rec.Event != agentsec.EventToolCall || rec.Outcome != tt.wantOutcome || !strings.HasPrefix(rec.Reason, tt.wantReason) {
				t.Errorf("record = %q %q %q, want %q %q %q…", rec.Event, rec.Outcome, rec.Reason,
					agentsec.EventToolCall, tt.wantOutcome, tt.wantReason)
			}
			if rec.Tokens != tt.wantTokens || rec.Namespace != "test" {
				t.Errorf("record tokens %d namespace %q, want %d %q", rec.Tokens, rec.Namespace, tt.wantTokens, "test")
			}
			if tt.req.Session != "" {
				if got := f.usage(t, tt.req.Session); got != tt.wantUsed {
					t.Errorf("budget used = %+v, want %+v", got, tt.wantUsed)
				}
			}
			if n, err := f.stack.Audit.Verify(ctx); err != nil {
				t.Errorf("Verify after %d records: %v", n, err)
			}
		})
	}
}

var errTool = errors.New("boom")

func tokens(n int64) agentsec.ToolFunc {
	return func(context.Context) (int64, error) { return n, nil }
}

func TestGuardRecordsLevels(t *testing.T) {
	f := newFixture(t, 10, 1000)
	err := f.stack.Guard(context.Background(), agentsec.Request{Agent: "bob", Session: "s", Tool: "write",
		Scope: "proj", Attrs: map[string]string{"client": "ide"}}, tokens(1))
	if !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("Guard = %v, want trust denial", err)
	}
	de, _ := errors.AsType[*agentsec.DeniedError](err)
	if de.Trust.RequiredName() != "verified" || de.Trust.AssignedName() != "public" {
		t.Errorf("denial carries required %q assigned %q, want verified, public", de.Trust.RequiredName(), de.Trust.AssignedName())
	}
	// An unassigned agent's denial still names the level the tool needs.
	_ = f.stack.Guard(context.Background(), agentsec.Request{Agent: "mallory", Session: "s", Tool: "admin.reboot"}, tokens(1))
	if rec := f.lastRecord(t); rec.RequiredLevel != "privileged" || rec.AssignedLevel != "" {
		t.Errorf("unassigned agent's record: required %q assigned %q, want privileged and none", rec.RequiredLevel, rec.AssignedLevel)
	}
	_ = f.stack.Guard(context.Background(), agentsec.Request{Agent: "bob", Session: "s", Tool: "write",
		Scope: "proj", Attrs: map[string]string{"client": "ide"}}, tokens(1))
	rec := f.lastRecord(t)
	if rec.RequiredLevel != "verified" || rec.AssignedLevel != "public" || rec.Agent != "bob" ||
		rec.Session != "s" || rec.Tool != "write" || rec.Scope != "proj" || rec.Attrs["client"] != "ide" {
		t.Errorf("record = %+v, want the request's fields and levels verified/public", rec)
	}
}

func TestGuardBudgetDenialSpendsNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2, 1000)
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "write"}
	for i := range 2 {
		if err := f.stack.Guard(ctx, req, tokens(10)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	ran := false
	err := f.stack.Guard(ctx, req, func(context.Context) (int64, error) { ran = true; return 10, nil })
	if !errors.Is(err, agentsec.ErrBudgetExceeded) || ran {
		t.Fatalf("third call: err %v, ran %v; want budget denial without running", err, ran)
	}
	if _, ok := errors.AsType[*budget.ExceededError](err); !ok {
		t.Errorf("budget denial %v does not carry the *budget.ExceededError", err)
	}
	de, _ := errors.AsType[*agentsec.DeniedError](err)
	if de.Reason != budget.ReasonCallLimit || de.Budget.Used.Calls != 2 {
		t.Errorf("denial reason %q state %+v, want %q with 2 calls used", de.Reason, de.Budget, budget.ReasonCallLimit)
	}
	if got := f.usage(t, "s"); got != (budget.Usage{Calls: 2, Tokens: 20}) {
		t.Errorf("used %+v after denial, want 2 calls 20 tokens", got)
	}
	// A trust denial on a fresh session spends nothing either.
	_ = f.stack.Guard(ctx, agentsec.Request{Agent: "bob", Session: "fresh", Tool: "write"}, tokens(10))
	if got := f.usage(t, "fresh"); got != (budget.Usage{}) {
		t.Errorf("trust-denied session used %+v, want nothing", got)
	}
}

func TestGuardTokenLimit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 100, 50)
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "write"}
	if err := f.stack.Guard(ctx, req, tokens(60)); err != nil {
		t.Fatalf("first call: %v", err)
	}
	err := f.stack.Guard(ctx, req, tokens(1))
	de, ok := errors.AsType[*agentsec.DeniedError](err)
	if !ok || !errors.Is(err, agentsec.ErrBudgetExceeded) || de.Reason != budget.ReasonTokenLimit {
		t.Fatalf("second call = %v, want token-limit denial", err)
	}
}

func TestGuardFailsClosedWhenAuditFails(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 10, 1000)
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "write"}
	f.audit.Fail.Store(true)

	// The log has not failed yet, so the call runs, but its record can't
	// be written: Guard denies and the caller must not use the result.
	err := f.stack.Guard(ctx, req, tokens(3))
	if !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Fatalf("Guard with a failing log = %v, want ErrAuditUnavailable", err)
	}
	if _, ok := errors.AsType[*agentsec.DeniedError](err); !ok {
		t.Errorf("error %T is not a *DeniedError", err)
	}
	used := f.usage(t, "s")

	// Now the log is known to be failing: calls are denied before they run
	// and spend nothing.
	for range 3 {
		ran := false
		err = f.stack.Guard(ctx, req, func(context.Context) (int64, error) { ran = true; return 3, nil })
		if !errors.Is(err, agentsec.ErrAuditUnavailable) || ran {
			t.Fatalf("Guard on a failed log: err %v, ran %v; want denial without running", err, ran)
		}
	}
	if got := f.usage(t, "s"); got != used {
		t.Errorf("denied calls spent budget: %+v, want %+v", got, used)
	}
	// Trust denials on a failed log still report the audit failure too.
	err = f.stack.Guard(ctx, agentsec.Request{Agent: "bob", Session: "s", Tool: "write"}, tokens(1))
	if !errors.Is(err, agentsec.ErrTrustDenied) || !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Errorf("trust denial on a failed log = %v, want both ErrTrustDenied and ErrAuditUnavailable", err)
	}

	// When the store recovers, the next denial is recorded, which shows
	// the log works again, and calls after it run.
	f.audit.Fail.Store(false)
	if err := f.stack.Guard(ctx, req, tokens(3)); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Fatalf("first call after recovery = %v, want the recorded denial", err)
	}
	if err := f.stack.Guard(ctx, req, tokens(3)); err != nil {
		t.Fatalf("second call after recovery = %v, want success", err)
	}
	if n, err := f.stack.Audit.Verify(ctx); err != nil {
		t.Fatalf("Verify after recovery (%d records): %v", n, err)
	}
}

// TestGuardPanicSpendsAndRecords: a panic in fn propagates, after the call
// is recorded and its slot kept — fn may have panicked after its call ran
// (counting the result, say), so a recovered panic is no way past the call
// limit.
func TestGuardPanicSpendsAndRecords(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1, 1000)
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "write"}
	before := f.stack.Audit.Size()
	ran := 0
	guard := func() (recovered any, err error) {
		defer func() { recovered = recover() }()
		return nil, f.stack.Guard(ctx, req, func(context.Context) (int64, error) { ran++; panic("kaboom") })
	}
	if r, _ := guard(); r != "kaboom" {
		t.Fatalf("recovered %v, want the tool's panic", r)
	}
	if rec := f.lastRecord(t); rec.Reason != "tool panicked" || rec.Outcome != audit.OutcomeAllowed {
		t.Errorf("record %s %q, want allowed %q", rec.Outcome, rec.Reason, "tool panicked")
	}
	if got := f.usage(t, "s"); got != (budget.Usage{Calls: 1}) {
		t.Errorf("used %+v after a panicking call, want its slot spent", got)
	}
	if r, err := guard(); !errors.Is(err, agentsec.ErrBudgetExceeded) || r != nil {
		t.Errorf("the next call in a session of one call = %v (panic %v), want ErrBudgetExceeded", err, r)
	}
	if ran != 1 {
		t.Errorf("a session of one call ran %d calls", ran)
	}
	if got := f.stack.Audit.Size() - before; got != 2 {
		t.Fatalf("appended %d records, want 2 (the call and the denial)", got)
	}
}

func TestGuardLongErrorIsTruncated(t *testing.T) {
	f := newFixture(t, 10, 1000)
	long := errors.New(strings.Repeat("é", 100_000))
	err := f.stack.Guard(context.Background(), agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
		func(context.Context) (int64, error) { return 0, long })
	if err != long {
		t.Fatalf("Guard = %.40v, want the tool's own error", err)
	}
	if rec := f.lastRecord(t); len(rec.Reason) > 1100 {
		t.Errorf("reason is %d bytes, want it cut to about 1 KiB", len(rec.Reason))
	}
}

func TestGuardCancelledContextStillRecords(t *testing.T) {
	f := newFixture(t, 10, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	err := f.stack.Guard(ctx, agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
		func(context.Context) (int64, error) { cancel(); return 4, nil })
	if err != nil {
		t.Fatalf("Guard = %v", err)
	}
	if got := f.usage(t, "s"); got != (budget.Usage{Calls: 1, Tokens: 4}) {
		t.Errorf("used %+v, want the call committed", got)
	}
	if rec := f.lastRecord(t); rec.Outcome != audit.OutcomeAllowed || rec.Tokens != 4 {
		t.Errorf("record = %+v, want the allowed call with its 4 tokens", rec)
	}
}

func TestGuardContextDoneBeforeCall(t *testing.T) {
	f := newFixture(t, 10, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := f.stack.Guard(ctx, agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
		func(context.Context) (int64, error) { ran = true; return 1, nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("Guard with a cancelled context: err %v, ran %v; want context.Canceled without running", err, ran)
	}
	if got := f.usage(t, "s"); got != (budget.Usage{}) {
		t.Errorf("used %+v, want nothing", got)
	}
	if rec := f.lastRecord(t); rec.Outcome != audit.OutcomeDenied || rec.Reason != "request cancelled before the call" {
		t.Errorf("record = %q %q, want the recorded denial", rec.Outcome, rec.Reason)
	}
}

// Whatever a caller or a tool passes in, Guard writes its one record, and
// the log stays healthy.
func TestGuardRecordsHostileInput(t *testing.T) {
	huge := strings.Repeat("x", 70<<10)
	bigAttrs := map[string]string{}
	for i := range 50 {
		bigAttrs[strconv.Itoa(i)] = strings.Repeat("v", 1000)
	}
	tests := []struct {
		name    string
		req     agentsec.Request
		fn      agentsec.ToolFunc
		wantErr error
		wantRan bool
	}{
		{"huge tool name", agentsec.Request{Agent: "alice", Session: "s", Tool: "admin." + huge}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"huge agent", agentsec.Request{Agent: huge, Session: "s", Tool: "write"}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"huge scope", agentsec.Request{Agent: "alice", Session: "s", Tool: "write", Scope: huge}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"huge session", agentsec.Request{Agent: "alice", Session: huge, Tool: "write"}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"huge attributes", agentsec.Request{Agent: "alice", Session: "s", Tool: "write", Attrs: bigAttrs}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"invalid UTF-8 attribute", agentsec.Request{Agent: "alice", Session: "s", Tool: "write",
			Attrs: map[string]string{"k": "\xff"}}, tokens(1), agentsec.ErrInvalidRequest, false},
		{"tool error with invalid UTF-8", agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
			func(context.Context) (int64, error) { return 0, errors.New("bad \xff\xfe bytes") }, nil, true},
		{"tool error of 1 MiB", agentsec.Request{Agent: "alice", Session: "s", Tool: "write"},
			func(context.Context) (int64, error) { return 0, errors.New(strings.Repeat("é", 1<<19)) }, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 10, 1000)
			before := f.stack.Audit.Size()
			ran := false
			err := f.stack.Guard(context.Background(), tt.req, func(ctx context.Context) (int64, error) {
				ran = true
				return tt.fn(ctx)
			})
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Guard = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(err, agentsec.ErrAuditUnavailable) {
				t.Errorf("Guard = %v: the record was not written", err)
			}
			if ran != tt.wantRan {
				t.Errorf("tool ran = %v, want %v", ran, tt.wantRan)
			}
			if got := f.stack.Audit.Size() - before; got != 1 {
				t.Errorf("appended %d records, want 1", got)
			}
			if err := f.stack.Audit.Err(); err != nil {
				t.Errorf("log unhealthy afterwards: %v", err)
			}
		})
	}
}

// Overflowing token counts count the call with no tokens.
func TestGuardOverflowingTokens(t *testing.T) {
	f := newFixture(t, 10, math.MaxInt64)
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "write"}
	if err := f.stack.Guard(context.Background(), req, tokens(1<<62)); err != nil {
		t.Fatal(err)
	}
	err := f.stack.Guard(context.Background(), req, tokens(1<<62))
	if !errors.Is(err, budget.ErrInvalidTokens) {
		t.Fatalf("Guard = %v, want ErrInvalidTokens", err)
	}
	if got := f.usage(t, "s"); got != (budget.Usage{Calls: 2, Tokens: 1 << 62}) {
		t.Errorf("used %+v, want 2 calls and the first call's tokens", got)
	}
}

// A call limit of 100 with 1,000 callers at once: exactly 100 run, every
// call is recorded once, and the log verifies.
func TestGuardConcurrentCallLimit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 100, 1<<40)
	before := f.stack.Audit.Size()
	var ran, denied atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 1000 {
		wg.Go(func() {
			<-start
			err := f.stack.Guard(ctx, agentsec.Request{Agent: "alice", Session: "shared", Tool: "write"},
				func(context.Context) (int64, error) { ran.Add(1); return 1, nil })
			switch {
			case err == nil:
			case errors.Is(err, agentsec.ErrBudgetExceeded):
				denied.Add(1)
			default:
				t.Errorf("Guard = %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if ran.Load() != 100 || denied.Load() != 900 {
		t.Errorf("ran %d, denied %d; want exactly 100 and 900", ran.Load(), denied.Load())
	}
	if got := f.stack.Audit.Size() - before; got != 1000 {
		t.Errorf("recorded %d calls, want 1000", got)
	}
	page, err := f.stack.Audit.Query(ctx, audit.Filter{Session: "shared", Outcome: audit.OutcomeAllowed, Limit: audit.MaxLimit})
	if err != nil || len(page.Records) != 100 {
		t.Errorf("allowed records: %d (%v), want 100", len(page.Records), err)
	}
	if _, err := f.stack.Audit.Verify(ctx); err != nil {
		t.Error(err)
	}
}

func TestAssignmentsAreAudited(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 10, 1000)
	// The configured assignments were recorded at start.
	page, err := f.stack.Audit.Query(ctx, audit.Filter{Event: agentsec.EventTrustAssign})
	if err != nil || len(page.Records) != 2 {
		t.Fatalf("config assignments recorded: %d (%v), want 2", len(page.Records), err)
	}

	expires := time.Now().Add(time.Hour)
	if err := f.stack.TrustGate.Assign(ctx, trust.Assignment{Agent: "bob", Level: "privileged", Scope: "ops", Expires: expires}); err != nil {
		t.Fatal(err)
	}
	rec := f.lastRecord(t)
	if rec.Event != agentsec.EventTrustAssign || rec.Agent != "bob" || rec.Scope != "ops" ||
		rec.AssignedLevel != "privileged" || rec.Attrs["expires"] == "" {
		t.Errorf("assign record = %+v", rec)
	}
	if d := f.stack.TrustGate.Check(agentsec.Request{Agent: "bob", Tool: "admin.x", Scope: "ops"}); !d.Allowed {
		t.Errorf("scoped assignment not in force: %v", d)
	}
	if err := f.stack.TrustGate.Assign(ctx, trust.Assignment{Agent: "alice", Level: "public"}); err != nil {
		t.Fatal(err)
	}
	if rec := f.lastRecord(t); rec.Attrs["previous"] != "verified" || rec.AssignedLevel != "public" {
		t.Errorf("reassignment record: previous %q assigned %q, want verified and public", rec.Attrs["previous"], rec.AssignedLevel)
	}

	// An invalid assignment is neither applied nor recorded.
	size := f.stack.Audit.Size()
	if err := f.stack.TrustGate.Assign(ctx, trust.Assignment{Agent: "bob", Level: "root"}); !errors.Is(err, trust.ErrUnknownLevel) {
		t.Errorf("Assign unknown level = %v, want ErrUnknownLevel", err)
	}
	if f.stack.Audit.Size() != size {
		t.Errorf("invalid assignment was recorded")
	}

	// If the record can't be written, the assignment is not applied.
	f.audit.Fail.Store(true)
	if err := f.stack.TrustGate.Assign(ctx, trust.Assignment{Agent: "bob", Level: "privileged"}); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Errorf("Assign on a failing log = %v, want ErrAuditUnavailable", err)
	}
	if d := f.stack.TrustGate.Check(agentsec.Request{Agent: "bob", Tool: "admin.x"}); d.Allowed {
		t.Errorf("unrecorded assignment took effect")
	}
	if err := f.stack.TrustGate.Revoke(ctx, "bob", "ops"); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Errorf("Revoke on a failing log = %v, want ErrAuditUnavailable", err)
	}
	f.audit.Fail.Store(false)

	if err := f.stack.TrustGate.Revoke(ctx, "bob", "ops"); err != nil {
		t.Fatal(err)
	}
	if rec := f.lastRecord(t); rec.Event != agentsec.EventTrustRevoke || rec.Agent != "bob" || rec.Scope != "ops" {
		t.Errorf("revoke record = %+v", rec)
	}
	if d := f.stack.TrustGate.Check(agentsec.Request{Agent: "bob", Tool: "admin.x", Scope: "ops"}); d.Allowed {
		t.Errorf("revoked assignment still in force")
	}
	if err := f.stack.TrustGate.Revoke(ctx, "bob", "ops"); err == nil {
		t.Errorf("second Revoke succeeded, want an error")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := func() agentsec.Config {
		return agentsec.Config{
			TrustGate:      agentsec.TrustGateConfig{ToolName: "file-reader", RequiredLevel: "verified"},
			Budget:         agentsec.BudgetConfig{TokenLimit: 10_000, CallLimit: 100},
			AuditNamespace: "ns",
		}
	}
	if s, err := agentsec.New(good()); err != nil {
		t.Fatalf("good config: %v", err)
	} else {
		s.Close()
	}
	tests := []struct {
		name   string
		change func(*agentsec.Config)
		want   string
	}{
		{"no namespace", func(c *agentsec.Config) { c.AuditNamespace = "" }, "AuditNamespace is empty"},
		{"unknown level", func(c *agentsec.Config) { c.TrustGate.RequiredLevel = "admin" }, `unknown trust level "admin"`},
		{"tool without level", func(c *agentsec.Config) { c.TrustGate.RequiredLevel = "" }, "has no RequiredLevel"},
		{"level without tool", func(c *agentsec.Config) { c.TrustGate.ToolName = "" }, "has no ToolName"},
		{"malformed pattern", func(c *agentsec.Config) {
			c.TrustGate.Rules = []trust.Rule{{Tool: "fs.[a-", Level: "public"}}
		}, "never closed"},
		{"duplicate rule", func(c *agentsec.Config) {
			c.TrustGate.Rules = []trust.Rule{{Tool: "file-reader", Level: "public"}}
		}, "already has a rule"},
		{"unknown default", func(c *agentsec.Config) { c.TrustGate.DefaultLevel = "root" }, "default level"},
		{"empty agent", func(c *agentsec.Config) {
			c.TrustGate.Agents = []trust.Assignment{{Level: "public"}}
		}, "empty agent id"},
		{"agent with unknown level", func(c *agentsec.Config) {
			c.TrustGate.Agents = []trust.Assignment{{Agent: "a", Level: "god"}}
		}, `unknown trust level "god"`},
		{"zero call limit", func(c *agentsec.Config) { c.Budget.CallLimit = 0 }, "call limit must be positive"},
		{"negative token limit", func(c *agentsec.Config) { c.Budget.TokenLimit = -1 }, "token limit must be positive"},
		{"aumos level on default ladder", func(c *agentsec.Config) { c.TrustGate.RequiredLevel = "autonomous" }, "unknown trust level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.change(&cfg)
			s, err := agentsec.New(cfg)
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestNewWithAumOSLadder(t *testing.T) {
	s, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Ladder: trust.AumOSLadder(), ToolName: "deploy", RequiredLevel: "act-with-approval",
			Agents: []trust.Assignment{{Agent: "a", Level: "suggest"}, {Agent: "b", Level: "autonomous"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1, CallLimit: 1},
		AuditNamespace: "ns",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := s.TrustGate.Check(agentsec.Request{Agent: "a", Tool: "deploy"}); d.Allowed {
		t.Errorf("suggest allowed a tool requiring act-with-approval")
	}
	if d := s.TrustGate.Check(agentsec.Request{Agent: "b", Tool: "deploy"}); !d.Allowed {
		t.Errorf("autonomous denied a tool requiring act-with-approval: %v", d)
	}
}

// TestGuardAllocatesNothing holds an allowed Guard over the in-memory log
// to no allocation of its own: its Call lives on its stack, and the log's
// batch append moves nothing to the heap. (The memory store's growth is
// allocated ahead, in chunks, and sync.Pool, which the race detector
// makes drop some of what it is given, is refilled: fewer than one
// allocation a call, which AllocsPerRun rounds down.)
func TestGuardAllocatesNothing(t *testing.T) {
	s, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			ToolName: "file-reader", RequiredLevel: "verified",
			Agents: []trust.Assignment{{Agent: "agent-7", Level: "verified"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
		AuditNamespace: "allocs",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	req := agentsec.Request{Agent: "agent-7", Session: "session-1", Tool: "file-reader"}
	tool := func(context.Context) (int64, error) { return 42, nil }
	guard := func() {
		if err := s.Guard(ctx, req, tool); err != nil {
			t.Fatal(err)
		}
	}
	// AllocsPerRun counts every goroutine's allocations: the fewest of a
	// few tries is Guard's, whatever else runs meanwhile.
	least := testing.AllocsPerRun(100, guard)
	for range 9 {
		least = min(least, testing.AllocsPerRun(100, guard))
	}
	if least != 0 {
		t.Errorf("Guard allocates %v times a call, want 0", least)
	}
}
