package budget_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/budget/budgettest"
)

var defaults = budget.Limits{Tokens: 1000, Calls: 10}

func newEnforcer(t *testing.T, limits budget.Limits) *budget.Enforcer {
	t.Helper()
	e, err := budget.NewEnforcer(budget.NewMemoryStore(), limits)
	if err != nil {
		t.Fatalf("NewEnforcer(%+v): %v", limits, err)
	}
	return e
}

func usage(t *testing.T, e *budget.Enforcer, session string) budget.State {
	t.Helper()
	st, err := e.Usage(t.Context(), session)
	if err != nil {
		t.Fatalf("Usage(%q): %v", session, err)
	}
	return st
}

func reserve(t *testing.T, e *budget.Enforcer, session string) *budget.Reservation {
	t.Helper()
	r, err := e.Reserve(t.Context(), session)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", session, err)
	}
	return &r
}

func TestNewEnforcer(t *testing.T) {
	tests := []struct {
		name    string
		store   budget.Store
		limits  budget.Limits
		wantErr bool
	}{
		{"valid", budget.NewMemoryStore(), defaults, false},
		{"smallest", budget.NewMemoryStore(), budget.Limits{Tokens: 1, Calls: 1}, false},
		{"nil store", nil, defaults, true},
		{"zero limits", budget.NewMemoryStore(), budget.Limits{}, true},
		{"zero tokens", budget.NewMemoryStore(), budget.Limits{Tokens: 0, Calls: 10}, true},
		{"zero calls", budget.NewMemoryStore(), budget.Limits{Tokens: 10, Calls: 0}, true},
		{"negative tokens", budget.NewMemoryStore(), budget.Limits{Tokens: -1, Calls: 10}, true},
		{"negative calls", budget.NewMemoryStore(), budget.Limits{Tokens: 10, Calls: -5}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := budget.NewEnforcer(tt.store, tt.limits)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewEnforcer = nil error, want error")
				}
				if e != nil {
					t.Errorf("NewEnforcer returned %v with its error, want nil", e)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewEnforcer: %v", err)
			}
			if got := e.Defaults(); got != tt.limits {
				t.Errorf("Defaults() = %+v, want %+v", got, tt.limits)
			}
			if got := e.Store(); got != tt.store {
				t.Errorf("Store() = %v, want %v", got, tt.store)
			}
		})
	}
}

func TestCheckBudget(t *testing.T) {
	t.Run("unknown session", func(t *testing.T) {
		e := newEnforcer(t, defaults)
		got, err := e.CheckBudget(t.Context(), "s")
		if err != nil {
			t.Fatalf("CheckBudget: %v", err)
		}
		want := budget.Status{Session: "s", Allowed: true, State: budget.State{Limits: defaults}}
		if got != want {
			t.Errorf("CheckBudget = %+v, want %+v", got, want)
		}
		if _, err := e.Store().Get(t.Context(), "s"); !errors.Is(err, budget.ErrUnknownSession) {
			t.Errorf("Get after CheckBudget: got %v, want %v", err, budget.ErrUnknownSession)
		}
	})

	tests := []struct {
		name       string
		calls      int64 // calls reserved and committed
		tokens     int64 // tokens committed by the last call
		wantReason string
	}{
		{"fresh", 0, 0, ""},
		{"some used", 3, 500, ""},
		{"call limit", defaults.Calls, 0, budget.ReasonCallLimit},
		{"token limit", 1, defaults.Tokens, budget.ReasonTokenLimit},
		{"past token limit", 1, defaults.Tokens + 1, budget.ReasonTokenLimit},
		{"both limits", defaults.Calls, defaults.Tokens, budget.ReasonCallLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, defaults)
			if _, err := e.Open(t.Context(), "s", defaults); err != nil {
				t.Fatalf("Open: %v", err)
			}
			for i := range tt.calls {
				r := reserve(t, e, "s")
				var n int64
				if i == tt.calls-1 {
					n = tt.tokens
				}
				if err := r.Commit(t.Context(), n); err != nil {
					t.Fatalf("Commit(%d): %v", n, err)
				}
			}
			got, err := e.CheckBudget(t.Context(), "s")
			if err != nil {
				t.Fatalf("CheckBudget: %v", err)
			}
			want := budget.Status{
				Session: "s",
				Allowed: tt.wantReason == "",
				State:   budget.State{Limits: defaults, Used: budget.Usage{Calls: tt.calls, Tokens: tt.tokens}},
				Reason:  tt.wantReason,
			}
			if got != want {
				t.Errorf("CheckBudget = %+v, want %+v", got, want)
			}
		})
	}
}

func TestInvalidSession(t *testing.T) {
	e := newEnforcer(t, defaults)
	sessions := []struct {
		name string
		id   string
	}{
		{"empty", ""},
		{"too long", strings.Repeat("x", budget.MaxSessionLen+1)},
		{"invalid UTF-8", "\xff"},
	}
	calls := []struct {
		name string
		call func(t *testing.T, id string) error
	}{
		{"CheckBudget", func(t *testing.T, id string) error {
			_, err := e.CheckBudget(t.Context(), id)
			return err
		}},
		{"RecordSpending", func(t *testing.T, id string) error {
			return e.RecordSpending(t.Context(), id, 1)
		}},
		{"Usage", func(t *testing.T, id string) error {
			_, err := e.Usage(t.Context(), id)
			return err
		}},
		{"Reserve", func(t *testing.T, id string) error {
			_, err := e.Reserve(t.Context(), id)
			return err
		}},
		{"Open", func(t *testing.T, id string) error {
			_, err := e.Open(t.Context(), id, defaults)
			return err
		}},
	}
	for _, c := range calls {
		for _, s := range sessions {
			t.Run(c.name+"/"+s.name, func(t *testing.T) {
				if err := c.call(t, s.id); !errors.Is(err, budget.ErrInvalidSession) {
					t.Errorf("got %v, want %v", err, budget.ErrInvalidSession)
				}
			})
		}
	}
}

func TestRecordSpending(t *testing.T) {
	t.Run("creates session", func(t *testing.T) {
		e := newEnforcer(t, defaults)
		if err := e.RecordSpending(t.Context(), "s", 25); err != nil {
			t.Fatalf("RecordSpending: %v", err)
		}
		want := budget.State{Limits: defaults, Used: budget.Usage{Calls: 1, Tokens: 25}}
		if got := usage(t, e, "s"); got != want {
			t.Errorf("Usage = %+v, want %+v", got, want)
		}
	})

	t.Run("ignores limits", func(t *testing.T) {
		limits := budget.Limits{Tokens: 10, Calls: 1}
		e := newEnforcer(t, limits)
		for range 3 {
			if err := e.RecordSpending(t.Context(), "s", 8); err != nil {
				t.Fatalf("RecordSpending: %v", err)
			}
		}
		want := budget.State{Limits: limits, Used: budget.Usage{Calls: 3, Tokens: 24}}
		if got := usage(t, e, "s"); got != want {
			t.Errorf("Usage = %+v, want %+v", got, want)
		}
	})

	tests := []struct {
		name   string
		opened bool
		tokens int64
	}{
		{"negative on new session", false, -1},
		{"min int on new session", false, math.MinInt64},
		{"negative on open session", true, -1},
		{"overflow", true, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, defaults)
			if tt.opened {
				if err := e.RecordSpending(t.Context(), "s", 1); err != nil {
					t.Fatalf("RecordSpending(1): %v", err)
				}
			}
			err := e.RecordSpending(t.Context(), "s", tt.tokens)
			if !errors.Is(err, budget.ErrInvalidTokens) {
				t.Errorf("RecordSpending(%d): got %v, want %v", tt.tokens, err, budget.ErrInvalidTokens)
			}
			if !tt.opened {
				if _, err := e.Usage(t.Context(), "s"); !errors.Is(err, budget.ErrUnknownSession) {
					t.Errorf("Usage after refused RecordSpending: got %v, want %v", err, budget.ErrUnknownSession)
				}
				return
			}
			want := budget.State{Limits: defaults, Used: budget.Usage{Calls: 1, Tokens: 1}}
			if got := usage(t, e, "s"); got != want {
				t.Errorf("Usage = %+v, want %+v", got, want)
			}
		})
	}
}

func TestUsageUnknownSession(t *testing.T) {
	e := newEnforcer(t, defaults)
	if _, err := e.Usage(t.Context(), "s"); !errors.Is(err, budget.ErrUnknownSession) {
		t.Errorf("Usage: got %v, want %v", err, budget.ErrUnknownSession)
	}
}

func TestReserveCreatesSession(t *testing.T) {
	e := newEnforcer(t, defaults)
	r := reserve(t, e, "s")
	want := budget.State{Limits: defaults, Used: budget.Usage{Calls: 1}}
	if got := r.State(); got != want {
		t.Errorf("State() = %+v, want %+v", got, want)
	}
	if got := r.Session(); got != "s" {
		t.Errorf("Session() = %q, want %q", got, "s")
	}
	if got := usage(t, e, "s"); got != want {
		t.Errorf("Usage = %+v, want %+v", got, want)
	}
}

func TestConcurrentReserve(t *testing.T) {
	const (
		callLimit  = 100
		goroutines = 1000
	)
	e := newEnforcer(t, budget.Limits{Tokens: 1 << 40, Calls: callLimit})
	ctx := t.Context()
	// The session isn't created beforehand: the goroutines also race to
	// create it.
	errs := budgettest.AtOnce(goroutines, func() error {
		_, err := e.Reserve(ctx, "s")
		return err
	})
	for _, err := range errs {
		if !errors.Is(err, budget.ErrExceeded) {
			t.Errorf("Reserve: got %v, want nil or %v", err, budget.ErrExceeded)
		}
	}
	if got := goroutines - len(errs); got != callLimit {
		t.Errorf("%d of %d concurrent Reserves succeeded, want %d", got, goroutines, callLimit)
	}
	if got := usage(t, e, "s").Used.Calls; got != callLimit {
		t.Errorf("calls used = %d, want %d", got, callLimit)
	}
}

func TestConcurrentRecordSpending(t *testing.T) {
	const (
		goroutines   = 8
		perGoroutine = 20_000
		total        = goroutines * perGoroutine
	)
	e := newEnforcer(t, defaults)
	ctx := t.Context()
	errs := budgettest.AtOnce(goroutines, func() error {
		for range perGoroutine {
			if err := e.RecordSpending(ctx, "s", 1); err != nil {
				return err
			}
		}
		return nil
	})
	for _, err := range errs {
		t.Errorf("RecordSpending: %v", err)
	}
	want := budget.State{Limits: defaults, Used: budget.Usage{Calls: total, Tokens: total}}
	if got := usage(t, e, "s"); got != want {
		t.Errorf("Usage = %+v, want %+v", got, want)
	}
}

func TestReservationClosed(t *testing.T) {
	commit := func(t *testing.T, r *budget.Reservation) error { return r.Commit(t.Context(), 5) }
	release := func(t *testing.T, r *budget.Reservation) error { return r.Release(t.Context()) }
	tests := []struct {
		name       string
		first      func(*testing.T, *budget.Reservation) error
		second     func(*testing.T, *budget.Reservation) error
		wantCalls  int64
		wantTokens int64
	}{
		{"commit twice", commit, commit, 1, 5},
		{"release after commit", commit, release, 1, 5},
		{"commit after release", release, commit, 0, 0},
		{"release twice", release, release, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, defaults)
			r := reserve(t, e, "s")
			if err := tt.first(t, r); err != nil {
				t.Fatalf("first: %v", err)
			}
			if err := tt.second(t, r); !errors.Is(err, budget.ErrReservationClosed) {
				t.Errorf("second: got %v, want %v", err, budget.ErrReservationClosed)
			}
			want := budget.State{Limits: defaults, Used: budget.Usage{Calls: tt.wantCalls, Tokens: tt.wantTokens}}
			if got := usage(t, e, "s"); got != want {
				t.Errorf("Usage = %+v, want %+v", got, want)
			}
		})
	}

	t.Run("zero reservation", func(t *testing.T) {
		var r budget.Reservation
		if err := r.Commit(t.Context(), 1); !errors.Is(err, budget.ErrReservationClosed) {
			t.Errorf("Commit: got %v, want %v", err, budget.ErrReservationClosed)
		}
		if err := r.Release(t.Context()); !errors.Is(err, budget.ErrReservationClosed) {
			t.Errorf("Release: got %v, want %v", err, budget.ErrReservationClosed)
		}
	})
}

func TestReservationInvalidCommit(t *testing.T) {
	limits := budget.Limits{Tokens: math.MaxInt64, Calls: 10}
	tests := []struct {
		name   string
		used   int64 // tokens committed by an earlier reservation
		tokens int64
	}{
		{"negative", 0, -1},
		{"min int", 0, math.MinInt64},
		{"overflow", 10, math.MaxInt64 - 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, limits)
			// Take both slots first: once used reaches the token limit
			// no more could be reserved.
			earlier := reserve(t, e, "s")
			r := reserve(t, e, "s")
			if err := earlier.Commit(t.Context(), tt.used); err != nil {
				t.Fatalf("earlier Commit(%d): %v", tt.used, err)
			}
			if err := r.Commit(t.Context(), tt.tokens); !errors.Is(err, budget.ErrInvalidTokens) {
				t.Errorf("Commit(%d): got %v, want %v", tt.tokens, err, budget.ErrInvalidTokens)
			}
			want := budget.State{Limits: limits, Used: budget.Usage{Calls: 2, Tokens: tt.used}}
			if got := usage(t, e, "s"); got != want {
				t.Errorf("Usage after invalid Commit = %+v, want %+v", got, want)
			}
			if err := r.Release(t.Context()); err != nil {
				t.Fatalf("Release after invalid Commit: %v", err)
			}
			want.Used.Calls = 1
			if got := usage(t, e, "s"); got != want {
				t.Errorf("Usage after Release = %+v, want %+v", got, want)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	first := budget.Limits{Tokens: 50, Calls: 2}
	tests := []struct {
		name    string
		limits  budget.Limits
		wantErr bool
	}{
		{"same limits", first, false},
		{"fewer tokens", budget.Limits{Tokens: 49, Calls: 2}, true},
		{"more tokens", budget.Limits{Tokens: 51, Calls: 2}, true},
		{"more calls", budget.Limits{Tokens: 50, Calls: 3}, true},
		{"defaults", defaults, true},
		{"invalid", budget.Limits{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, defaults)
			got, err := e.Open(t.Context(), "s", first)
			if err != nil {
				t.Fatalf("first Open: %v", err)
			}
			if want := (budget.State{Limits: first}); got != want {
				t.Errorf("first Open = %+v, want %+v", got, want)
			}
			reserve(t, e, "s")
			_, err = e.Open(t.Context(), "s", tt.limits)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("second Open(%+v): got error %v, want error %t", tt.limits, err, tt.wantErr)
			}
			want := budget.State{Limits: first, Used: budget.Usage{Calls: 1}}
			if got := usage(t, e, "s"); got != want {
				t.Errorf("Usage = %+v, want %+v", got, want)
			}
		})
	}

	t.Run("after implicit create", func(t *testing.T) {
		e := newEnforcer(t, defaults)
		if err := e.RecordSpending(t.Context(), "s", 1); err != nil {
			t.Fatalf("RecordSpending: %v", err)
		}
		if _, err := e.Open(t.Context(), "s", first); err == nil {
			t.Errorf("Open with other limits after RecordSpending = nil error, want error")
		}
		if got := usage(t, e, "s").Limits; got != defaults {
			t.Errorf("limits = %+v, want %+v", got, defaults)
		}
	})

	t.Run("limits enforced", func(t *testing.T) {
		e := newEnforcer(t, defaults)
		if _, err := e.Open(t.Context(), "s", first); err != nil {
			t.Fatalf("Open: %v", err)
		}
		for range first.Calls {
			reserve(t, e, "s")
		}
		if _, err := e.Reserve(t.Context(), "s"); !errors.Is(err, budget.ErrExceeded) {
			t.Errorf("Reserve past the opened call limit: got %v, want %v", err, budget.ErrExceeded)
		}
	})
}

func TestReserveTokenLimit(t *testing.T) {
	limits := budget.Limits{Tokens: 100, Calls: 10}
	tests := []struct {
		name   string
		tokens []int64 // committed by successive reservations
		want   string  // Reason of the next Reserve; "" if it succeeds
	}{
		{"below", []int64{60, 39}, ""},
		{"reached", []int64{60, 40}, budget.ReasonTokenLimit},
		{"crossed by one call", []int64{10, 500}, budget.ReasonTokenLimit},
		{"in one call", []int64{100}, budget.ReasonTokenLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnforcer(t, limits)
			var sum int64
			for _, n := range tt.tokens {
				r := reserve(t, e, "s")
				if err := r.Commit(t.Context(), n); err != nil {
					t.Fatalf("Commit(%d): %v", n, err)
				}
				sum += n
			}
			_, err := e.Reserve(t.Context(), "s")
			if tt.want == "" {
				if err != nil {
					t.Errorf("Reserve after %d tokens: %v", sum, err)
				}
				return
			}
			if !errors.Is(err, budget.ErrExceeded) {
				t.Fatalf("Reserve after %d tokens: got %v, want %v", sum, err, budget.ErrExceeded)
			}
			var ee *budget.ExceededError
			if !errors.As(err, &ee) {
				t.Fatalf("Reserve: got %T, want *budget.ExceededError", err)
			}
			if got := ee.Reason(); got != tt.want {
				t.Errorf("Reason() = %q, want %q", got, tt.want)
			}
			used := budget.Usage{Calls: int64(len(tt.tokens)), Tokens: sum}
			if got := ee.State.Used; got != used {
				t.Errorf("ExceededError.State.Used = %+v, want %+v", got, used)
			}
			if got := usage(t, e, "s").Used; got != used {
				t.Errorf("Usage after refused Reserve = %+v, want %+v", got, used)
			}
		})
	}
}

func TestExceededError(t *testing.T) {
	tests := []struct {
		name   string
		err    *budget.ExceededError
		want   string
		reason string
	}{
		{
			name: "call limit",
			err: &budget.ExceededError{Session: "agent-1", State: budget.State{
				Limits: budget.Limits{Tokens: 1000, Calls: 2},
				Used:   budget.Usage{Calls: 2, Tokens: 300},
			}},
			want:   `budget exceeded for session "agent-1": call limit reached (calls 2/2, tokens 300/1000)`,
			reason: budget.ReasonCallLimit,
		},
		{
			name: "token limit",
			err: &budget.ExceededError{Session: "agent-2", State: budget.State{
				Limits: budget.Limits{Tokens: 1000, Calls: 10},
				Used:   budget.Usage{Calls: 3, Tokens: 1200},
			}},
			want:   `budget exceeded for session "agent-2": token limit reached (calls 3/10, tokens 1200/1000)`,
			reason: budget.ReasonTokenLimit,
		},
		{
			name: "session quoted",
			err: &budget.ExceededError{Session: "a\"b\n", State: budget.State{
				Limits: budget.Limits{Tokens: 1, Calls: 1},
				Used:   budget.Usage{Calls: 1},
			}},
			want:   `budget exceeded for session "a\"b\n": call limit reached (calls 1/1, tokens 0/1)`,
			reason: budget.ReasonCallLimit,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
			if got := tt.err.Reason(); got != tt.reason {
				t.Errorf("Reason() = %q, want %q", got, tt.reason)
			}
			if !errors.Is(tt.err, budget.ErrExceeded) {
				t.Errorf("errors.Is(%v, ErrExceeded) = false, want true", tt.err)
			}
		})
	}

	t.Run("from Reserve", func(t *testing.T) {
		e := newEnforcer(t, budget.Limits{Tokens: 1000, Calls: 1})
		r := reserve(t, e, "agent-1")
		if err := r.Commit(t.Context(), 42); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		_, err := e.Reserve(t.Context(), "agent-1")
		if err == nil {
			t.Fatal("Reserve past the call limit = nil error, want error")
		}
		want := `budget exceeded for session "agent-1": call limit reached (calls 1/1, tokens 42/1000)`
		if got := err.Error(); got != want {
			t.Errorf("Error() = %q, want %q", got, want)
		}
	})
}
