// Package budgettest is a conformance suite for implementations of
// budget.Store. Every store — in memory, SQLite, PostgreSQL — runs the
// same suite from its own tests:
//
//	func TestStore(t *testing.T) {
//		budgettest.Run(t, func(t *testing.T) budget.Store {
//			return budget.NewMemoryStore()
//		})
//	}
package budgettest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec/budget"
)

// Run checks that the stores newStore returns behave as budget.Store
// documents, using only that interface. It calls newStore once per
// subtest; newStore must return a usable store and arrange with
// t.Cleanup for whatever must happen when the subtest ends, such as
// closing the store. Stores may be shared or persist between calls:
// every subtest works on session ids no other subtest or run uses.
//
// ConcurrentRecord makes 160,000 calls on one session; with -short, or
// with RunWith's Options, fewer.
func Run(t *testing.T, newStore func(t *testing.T) budget.Store) {
	RunWith(t, Options{}, newStore)
}

// Options tune RunWith for a store.
type Options struct {
	// ConcurrentRecords is how many calls the ConcurrentRecord subtest
	// makes on one session, from 8 goroutines: 160,000 if zero, a tenth
	// of that with -short. A store across a network, where each call is
	// a round trip to one contended row, wants fewer.
	ConcurrentRecords int
}

// RunWith is Run with options.
func RunWith(t *testing.T, opts Options, newStore func(t *testing.T) budget.Store) {
	records := opts.ConcurrentRecords
	if records == 0 {
		records = 160_000
		if testing.Short() {
			records /= 10
		}
	}
	tests := []struct {
		name string
		fn   func(*testing.T, budget.Store)
	}{
		{"CreateReturnsNewState", testCreateReturnsNewState},
		{"CreateIsIdempotent", testCreateIsIdempotent},
		{"CreateRejectsInvalidLimits", testCreateRejectsInvalidLimits},
		{"CreateRejectsInvalidSession", testCreateRejectsInvalidSession},
		{"CreateAcceptsLongestSession", testCreateAcceptsLongestSession},
		{"SessionsAreIndependent", testSessionsAreIndependent},
		{"ReserveUpToCallLimit", testReserveUpToCallLimit},
		{"ReserveRefusedAtTokenLimit", testReserveRefusedAtTokenLimit},
		{"CommitAddsTokens", testCommitAddsTokens},
		{"CommitRejectsInvalidTokens", testCommitRejectsInvalidTokens},
		{"CommitWithinStopsAtTokenLimit", testCommitWithinStopsAtTokenLimit},
		{"CommitWithinRejectsInvalidTokens", testCommitWithinRejectsInvalidTokens},
		{"ConcurrentCommitWithin", testConcurrentCommitWithin},
		{"ForgetDeletes", testForgetDeletes},
		{"ReleaseGivesBackSlot", testReleaseGivesBackSlot},
		{"ReleaseNeverGoesNegative", testReleaseNeverGoesNegative},
		{"RecordIgnoresLimits", testRecordIgnoresLimits},
		{"RecordRejectsInvalidTokens", testRecordRejectsInvalidTokens},
		{"UnknownSession", testUnknownSession},
		{"ConcurrentReserve", testConcurrentReserve},
		{"ConcurrentFirstReserves", testConcurrentFirstReserves},
		{"ConcurrentRecord", func(t *testing.T, s budget.Store) { testConcurrentRecord(t, s, records) }},
	}
	// A LazyCommitter's lazy commits obey CommitWithin's rules.
	for _, tt := range []struct {
		name string
		fn   func(*testing.T, budget.Store)
	}{
		{"LazyCommitWithinStopsAtTokenLimit", testCommitWithinStopsAtTokenLimit},
		{"LazyCommitWithinRejectsInvalidTokens", testCommitWithinRejectsInvalidTokens},
		{"ConcurrentLazyCommitWithin", testConcurrentCommitWithin},
	} {
		tests = append(tests, struct {
			name string
			fn   func(*testing.T, budget.Store)
		}{tt.name, func(t *testing.T, s budget.Store) {
			lazy, ok := s.(budget.LazyCommitter)
			if !ok {
				t.Skip("the store has no lazy commits (budget.LazyCommitter)")
			}
			tt.fn(t, lazily{lazy})
		}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			if s == nil {
				t.Fatal("newStore returned nil")
			}
			tt.fn(t, s)
		})
	}
}

// lazily is a LazyCommitter whose CommitWithin commits lazily.
type lazily struct{ budget.LazyCommitter }

func (l lazily) CommitWithin(ctx context.Context, session string, tokens int64) (budget.State, error) {
	return l.CommitWithinLazily(ctx, session, tokens)
}

// runID keeps session ids of this process apart from those of earlier
// runs against a persistent store.
var runID = rand.Text()

var sessionSeq atomic.Int64

// newSession returns a session id used nowhere else.
func newSession(t *testing.T) string {
	return fmt.Sprintf("budgettest/%s/%s/%d", runID, t.Name(), sessionSeq.Add(1))
}

// create makes a new session with limits and fails the test if it can't.
func create(t *testing.T, s budget.Store, limits budget.Limits) string {
	t.Helper()
	id := newSession(t)
	if _, err := s.Create(t.Context(), id, limits); err != nil {
		t.Fatalf("Create(%q, %+v): %v", id, limits, err)
	}
	return id
}

// wantState fails the test unless session's state is want.
func wantState(t *testing.T, s budget.Store, session string, want budget.State) {
	t.Helper()
	got, err := s.Get(t.Context(), session)
	if err != nil {
		t.Fatalf("Get(%q): %v", session, err)
	}
	if got != want {
		t.Errorf("Get(%q) = %+v, want %+v", session, got, want)
	}
}

func state(limits budget.Limits, calls, tokens int64) budget.State {
	return budget.State{Limits: limits, Used: budget.Usage{Calls: calls, Tokens: tokens}}
}

func testCreateReturnsNewState(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 1000, Calls: 10}
	id := newSession(t)
	got, err := s.Create(t.Context(), id, limits)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if want := state(limits, 0, 0); got != want {
		t.Errorf("Create = %+v, want %+v", got, want)
	}
	wantState(t, s, id, state(limits, 0, 0))
}

func testCreateIsIdempotent(t *testing.T, s budget.Store) {
	first := budget.Limits{Tokens: 1000, Calls: 10}
	id := create(t, s, first)
	if _, err := s.Reserve(t.Context(), id); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if err := s.Commit(t.Context(), id, 7); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	for _, limits := range []budget.Limits{
		first,
		{Tokens: 5, Calls: 1},
		{Tokens: 1 << 40, Calls: 1 << 40},
	} {
		got, err := s.Create(t.Context(), id, limits)
		if err != nil {
			t.Fatalf("Create again with %+v: %v", limits, err)
		}
		if want := state(first, 1, 7); got != want {
			t.Errorf("Create again with %+v = %+v, want %+v", limits, got, want)
		}
	}
	wantState(t, s, id, state(first, 1, 7))
}

func testCreateRejectsInvalidLimits(t *testing.T, s budget.Store) {
	tests := []struct {
		name   string
		limits budget.Limits
	}{
		{"zero", budget.Limits{}},
		{"zero tokens", budget.Limits{Tokens: 0, Calls: 10}},
		{"zero calls", budget.Limits{Tokens: 10, Calls: 0}},
		{"negative tokens", budget.Limits{Tokens: -1, Calls: 10}},
		{"negative calls", budget.Limits{Tokens: 10, Calls: -1}},
		{"min int tokens", budget.Limits{Tokens: math.MinInt64, Calls: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := newSession(t)
			if _, err := s.Create(t.Context(), id, tt.limits); err == nil {
				t.Fatalf("Create(%+v) = nil error, want error", tt.limits)
			}
			_, err := s.Get(t.Context(), id)
			if !errors.Is(err, budget.ErrUnknownSession) {
				t.Errorf("Get after failed Create: got %v, want %v", err, budget.ErrUnknownSession)
			}
		})
	}
}

func testCreateRejectsInvalidSession(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 10, Calls: 10}
	tests := []struct {
		name    string
		session string
	}{
		{"empty", ""},
		{"too long", strings.Repeat("x", budget.MaxSessionLen+1)},
		{"invalid UTF-8", "session-\xff"},
		{"truncated UTF-8", "session-\xe2\x82"},
		{"NUL", "session-\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Create(t.Context(), tt.session, limits)
			if !errors.Is(err, budget.ErrInvalidSession) {
				t.Errorf("Create: got %v, want %v", err, budget.ErrInvalidSession)
			}
		})
	}
}

func testCreateAcceptsLongestSession(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 10, Calls: 10}
	// Multi-byte runes make sure the limit is counted in bytes and that
	// the store keeps such ids intact.
	id := newSession(t) + "/é"
	id += strings.Repeat("x", budget.MaxSessionLen-len(id))
	if len(id) != budget.MaxSessionLen {
		t.Fatalf("test id is %d bytes, want %d", len(id), budget.MaxSessionLen)
	}
	if _, err := s.Create(t.Context(), id, limits); err != nil {
		t.Fatalf("Create with a %d-byte id: %v", len(id), err)
	}
	if _, err := s.Reserve(t.Context(), id); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	wantState(t, s, id, state(limits, 1, 0))
	// An id that is a prefix of the stored one is another session.
	_, err := s.Get(t.Context(), id[:len(id)-1])
	if !errors.Is(err, budget.ErrUnknownSession) {
		t.Errorf("Get of a prefix: got %v, want %v", err, budget.ErrUnknownSession)
	}
}

func testSessionsAreIndependent(t *testing.T, s budget.Store) {
	la := budget.Limits{Tokens: 100, Calls: 1}
	lb := budget.Limits{Tokens: 200, Calls: 5}
	a := create(t, s, la)
	b := create(t, s, lb)
	if _, err := s.Reserve(t.Context(), a); err != nil {
		t.Fatalf("Reserve(a): %v", err)
	}
	if err := s.Commit(t.Context(), a, 40); err != nil {
		t.Fatalf("Commit(a): %v", err)
	}
	if _, err := s.Reserve(t.Context(), b); err != nil {
		t.Errorf("Reserve(b) after a used its only call: %v", err)
	}
	wantState(t, s, a, state(la, 1, 40))
	wantState(t, s, b, state(lb, 1, 0))
}

func testReserveUpToCallLimit(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 1000, Calls: 3}
	id := create(t, s, limits)
	for i := int64(1); i <= limits.Calls; i++ {
		got, err := s.Reserve(t.Context(), id)
		if err != nil {
			t.Fatalf("Reserve %d: %v", i, err)
		}
		if want := state(limits, i, 0); got != want {
			t.Errorf("Reserve %d = %+v, want %+v", i, got, want)
		}
	}
	full := state(limits, limits.Calls, 0)
	for i := range 2 {
		_, err := s.Reserve(t.Context(), id)
		wantExceeded(t, err, id, full, budget.ReasonCallLimit)
		if t.Failed() {
			t.Fatalf("Reserve %d past the call limit failed", i+1)
		}
	}
	wantState(t, s, id, full)
}

// wantExceeded fails the test unless err is an *budget.ExceededError for
// session in state want, refused for reason.
func wantExceeded(t *testing.T, err error, session string, want budget.State, reason string) {
	t.Helper()
	if !errors.Is(err, budget.ErrExceeded) {
		t.Errorf("Reserve: got %v, want %v", err, budget.ErrExceeded)
		return
	}
	var ee *budget.ExceededError
	if !errors.As(err, &ee) {
		t.Errorf("Reserve: got %T, want it to wrap *budget.ExceededError", err)
		return
	}
	if ee.Session != session {
		t.Errorf("ExceededError.Session = %q, want %q", ee.Session, session)
	}
	if ee.State != want {
		t.Errorf("ExceededError.State = %+v, want %+v", ee.State, want)
	}
	if got := ee.Reason(); got != reason {
		t.Errorf("ExceededError.Reason() = %q, want %q", got, reason)
	}
}

func testReserveRefusedAtTokenLimit(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 100, Calls: 10}
	tests := []struct {
		name    string
		tokens  int64
		allowed bool
	}{
		{"one below limit", 99, true},
		{"at limit", 100, false},
		{"past limit", 150, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := create(t, s, limits)
			if _, err := s.Reserve(t.Context(), id); err != nil {
				t.Fatalf("first Reserve: %v", err)
			}
			// The call that crosses the limit completes: Commit
			// doesn't check it.
			if err := s.Commit(t.Context(), id, tt.tokens); err != nil {
				t.Fatalf("Commit(%d): %v", tt.tokens, err)
			}
			_, err := s.Reserve(t.Context(), id)
			if tt.allowed {
				if err != nil {
					t.Fatalf("Reserve after %d tokens: %v", tt.tokens, err)
				}
				wantState(t, s, id, state(limits, 2, tt.tokens))
				return
			}
			before := state(limits, 1, tt.tokens)
			wantExceeded(t, err, id, before, budget.ReasonTokenLimit)
			wantState(t, s, id, before)
		})
	}
}

func testCommitAddsTokens(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 1000, Calls: 10}
	id := create(t, s, limits)
	var calls, tokens int64
	for _, n := range []int64{0, 1, 250, 0, 42} {
		if _, err := s.Reserve(t.Context(), id); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
		if err := s.Commit(t.Context(), id, n); err != nil {
			t.Fatalf("Commit(%d): %v", n, err)
		}
		calls++
		tokens += n
		wantState(t, s, id, state(limits, calls, tokens))
	}
}

// testCommitWithinStopsAtTokenLimit checks that CommitWithin counts a
// result only while the session's tokens are below its limit: the one
// that crosses it counts whole, later ones count nothing, and each keeps
// its call slot.
func testCommitWithinStopsAtTokenLimit(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 100, Calls: 10}
	id := create(t, s, limits)
	for range 3 {
		if _, err := s.Reserve(t.Context(), id); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
	}
	steps := []struct {
		tokens int64
		ok     bool
		want   budget.State
	}{
		{60, true, state(limits, 3, 60)},
		{70, true, state(limits, 3, 130)}, // crosses the limit, counted whole
		{5, false, state(limits, 3, 130)}, // at the limit: nothing counted
	}
	for i, st := range steps {
		got, err := s.CommitWithin(t.Context(), id, st.tokens)
		if st.ok {
			if err != nil {
				t.Fatalf("CommitWithin %d (%d tokens): %v", i, st.tokens, err)
			}
			if got != st.want {
				t.Errorf("CommitWithin %d = %+v, want %+v", i, got, st.want)
			}
		} else {
			var ee *budget.ExceededError
			if !errors.As(err, &ee) || ee.Reason() != budget.ReasonTokenLimit {
				t.Fatalf("CommitWithin %d at the limit: got %v, want an *ExceededError for the token limit", i, err)
			}
		}
		wantState(t, s, id, st.want)
	}
}

func testCommitWithinRejectsInvalidTokens(t *testing.T, s budget.Store) {
	testRejectsInvalidTokens(t, s, "CommitWithin", func(ctx context.Context, session string, tokens int64) error {
		_, err := s.CommitWithin(ctx, session, tokens)
		return err
	})
}

// testConcurrentCommitWithin commits many results at once on a session
// whose limit only a few fit under: the tokens counted pass the limit by
// less than one result, however the commits interleave.
func testConcurrentCommitWithin(t *testing.T, s budget.Store) {
	const (
		goroutines = 200
		result     = 7
	)
	limits := budget.Limits{Tokens: 100, Calls: goroutines}
	id := create(t, s, limits)
	ctx := t.Context()
	for range goroutines {
		if _, err := s.Reserve(ctx, id); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
	}
	errs := AtOnce(goroutines, func() error {
		_, err := s.CommitWithin(ctx, id, result)
		return err
	})
	for _, err := range errs {
		if !errors.Is(err, budget.ErrExceeded) {
			t.Fatalf("CommitWithin: got %v, want nil or %v", err, budget.ErrExceeded)
		}
	}
	counted := int64(goroutines-len(errs)) * result
	// Results are counted while fewer than 100 tokens are: 15 of them.
	wantCounted := (limits.Tokens + result - 1) / result * result
	if counted != wantCounted {
		t.Errorf("%d tokens counted by %d concurrent CommitWithins, want %d", counted, goroutines, wantCounted)
	}
	wantState(t, s, id, state(limits, goroutines, wantCounted))
}

func testForgetDeletes(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 100, Calls: 2}
	id := create(t, s, limits)
	if _, err := s.Reserve(t.Context(), id); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	other := create(t, s, limits)
	if err := s.Forget(t.Context(), id); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if _, err := s.Get(t.Context(), id); !errors.Is(err, budget.ErrUnknownSession) {
		t.Errorf("Get after Forget: got %v, want %v", err, budget.ErrUnknownSession)
	}
	if err := s.Forget(t.Context(), id); err != nil {
		t.Errorf("Forget of a forgotten session: %v", err)
	}
	wantState(t, s, other, state(limits, 0, 0))
	// Created again, it starts afresh.
	if _, err := s.Create(t.Context(), id, limits); err != nil {
		t.Fatalf("Create after Forget: %v", err)
	}
	wantState(t, s, id, state(limits, 0, 0))
}

func testCommitRejectsInvalidTokens(t *testing.T, s budget.Store) {
	testRejectsInvalidTokens(t, s, "Commit", s.Commit)
}

func testRecordRejectsInvalidTokens(t *testing.T, s budget.Store) {
	testRejectsInvalidTokens(t, s, "Record", s.Record)
}

// testRejectsInvalidTokens checks that add, Commit or Record, refuses
// negative and overflowing counts with ErrInvalidTokens and changes
// nothing.
func testRejectsInvalidTokens(t *testing.T, s budget.Store, name string, add func(ctx context.Context, session string, tokens int64) error) {
	limits := budget.Limits{Tokens: math.MaxInt64, Calls: 10}
	tests := []struct {
		name   string
		used   int64 // tokens used before the bad call
		tokens int64
	}{
		{"negative", 0, -1},
		{"min int", 0, math.MinInt64},
		{"negative after use", 500, -500},
		{"max int after one", 1, math.MaxInt64},
		{"one past max", math.MaxInt64, 1},
		{"overflow", math.MaxInt64 - 10, 11},
		{"max int after max int", math.MaxInt64, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := create(t, s, limits)
			if _, err := s.Reserve(t.Context(), id); err != nil {
				t.Fatalf("Reserve: %v", err)
			}
			if err := s.Commit(t.Context(), id, tt.used); err != nil {
				t.Fatalf("Commit(%d): %v", tt.used, err)
			}
			before := state(limits, 1, tt.used)
			err := add(t.Context(), id, tt.tokens)
			if !errors.Is(err, budget.ErrInvalidTokens) {
				t.Errorf("%s(%d) after %d: got %v, want %v", name, tt.tokens, tt.used, err, budget.ErrInvalidTokens)
			}
			wantState(t, s, id, before)
		})
	}
	t.Run("largest valid", func(t *testing.T) {
		id := create(t, s, limits)
		if _, err := s.Reserve(t.Context(), id); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
		if err := add(t.Context(), id, math.MaxInt64-1); err != nil {
			t.Fatalf("%s(MaxInt64-1): %v", name, err)
		}
		if err := add(t.Context(), id, 1); err != nil {
			t.Fatalf("%s(1) up to MaxInt64: %v", name, err)
		}
		got, err := s.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if got.Used.Tokens != math.MaxInt64 {
			t.Errorf("tokens used = %d, want %d", got.Used.Tokens, int64(math.MaxInt64))
		}
	})
}

func testReleaseGivesBackSlot(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 1000, Calls: 2}
	id := create(t, s, limits)
	for range 2 {
		if _, err := s.Reserve(t.Context(), id); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
	}
	if err := s.Release(t.Context(), id); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wantState(t, s, id, state(limits, 1, 0))
	got, err := s.Reserve(t.Context(), id)
	if err != nil {
		t.Fatalf("Reserve after Release: %v", err)
	}
	if want := state(limits, 2, 0); got != want {
		t.Errorf("Reserve after Release = %+v, want %+v", got, want)
	}
	for range 2 {
		if err := s.Release(t.Context(), id); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	wantState(t, s, id, state(limits, 0, 0))
}

// testReleaseNeverGoesNegative checks that a Release with no call
// reserved, whether or not the store reports it as an error, leaves no
// negative count that would hand out extra slots.
func testReleaseNeverGoesNegative(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 1000, Calls: 1}
	id := create(t, s, limits)
	s.Release(t.Context(), id) // the error, if any, is the store's choice
	wantState(t, s, id, state(limits, 0, 0))
	if _, err := s.Reserve(t.Context(), id); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	_, err := s.Reserve(t.Context(), id)
	if !errors.Is(err, budget.ErrExceeded) {
		t.Errorf("second Reserve with call limit 1: got %v, want %v", err, budget.ErrExceeded)
	}
}

func testRecordIgnoresLimits(t *testing.T, s budget.Store) {
	limits := budget.Limits{Tokens: 10, Calls: 2}
	id := create(t, s, limits)
	tokens := []int64{4, 0, 20, 1}
	var sum int64
	for i, n := range tokens {
		if err := s.Record(t.Context(), id, n); err != nil {
			t.Fatalf("Record %d (%d tokens): %v", i+1, n, err)
		}
		sum += n
		wantState(t, s, id, state(limits, int64(i+1), sum))
	}
	_, err := s.Reserve(t.Context(), id)
	wantExceeded(t, err, id, state(limits, int64(len(tokens)), sum), budget.ReasonCallLimit)
}

func testUnknownSession(t *testing.T, s budget.Store) {
	id := newSession(t)
	// Another session existing must not make id known.
	create(t, s, budget.Limits{Tokens: 10, Calls: 10})
	tests := []struct {
		name string
		call func() error
	}{
		{"Reserve", func() error { _, err := s.Reserve(t.Context(), id); return err }},
		{"Commit", func() error { return s.Commit(t.Context(), id, 1) }},
		{"Release", func() error { return s.Release(t.Context(), id) }},
		{"Record", func() error { return s.Record(t.Context(), id, 1) }},
		{"Get", func() error { _, err := s.Get(t.Context(), id); return err }},
		{"CommitWithin", func() error { _, err := s.CommitWithin(t.Context(), id, 1); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, budget.ErrUnknownSession) {
				t.Errorf("%s: got %v, want %v", tt.name, err, budget.ErrUnknownSession)
			}
		})
	}
	// None of the calls above may have created the session.
	if _, err := s.Get(t.Context(), id); !errors.Is(err, budget.ErrUnknownSession) {
		t.Errorf("Get after the calls: got %v, want %v", err, budget.ErrUnknownSession)
	}
}

func testConcurrentReserve(t *testing.T, s budget.Store) {
	const (
		callLimit  = 100
		goroutines = 1000
	)
	limits := budget.Limits{Tokens: 1 << 40, Calls: callLimit}
	id := create(t, s, limits)
	ctx := t.Context()
	errs := AtOnce(goroutines, func() error {
		_, err := s.Reserve(ctx, id)
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
	wantState(t, s, id, state(limits, callLimit, 0))
}

// testConcurrentFirstReserves reserves on a session that doesn't exist
// yet from many goroutines at once, each creating it when told it is
// unknown, as budget.Enforcer does: a refusal must come only once the
// limit is reached, never from the session appearing between a store's
// steps.
func testConcurrentFirstReserves(t *testing.T, s budget.Store) {
	const (
		callLimit  = 5
		goroutines = 20
		sessions   = 30 // the window is narrow: try it often
	)
	limits := budget.Limits{Tokens: 1 << 40, Calls: callLimit}
	ctx := t.Context()
	for range sessions {
		id := newSession(t)
		errs := AtOnce(goroutines, func() error {
			_, err := s.Reserve(ctx, id)
			if errors.Is(err, budget.ErrUnknownSession) {
				if _, err := s.Create(ctx, id, limits); err != nil {
					return err
				}
				_, err = s.Reserve(ctx, id)
			}
			return err
		})
		for _, err := range errs {
			var ee *budget.ExceededError
			if !errors.As(err, &ee) {
				t.Fatalf("Reserve: got %v, want nil or %v", err, budget.ErrExceeded)
			} else if ee.State.Allows() {
				t.Fatalf("Reserve refused with a state that allows a call: %+v", ee.State)
			}
		}
		if got := goroutines - len(errs); got != callLimit {
			t.Fatalf("%d of %d concurrent first Reserves succeeded, want %d", got, goroutines, callLimit)
		}
		wantState(t, s, id, state(limits, callLimit, 0))
	}
}

func testConcurrentRecord(t *testing.T, s budget.Store, records int) {
	const goroutines = 8
	perGoroutine := max(1, records/goroutines)
	// Limits far below the total: Record must not check them.
	limits := budget.Limits{Tokens: 10, Calls: 10}
	id := create(t, s, limits)
	ctx := t.Context()
	errs := AtOnce(goroutines, func() error {
		for range perGoroutine {
			if err := s.Record(ctx, id, 1); err != nil {
				return err
			}
		}
		return nil
	})
	for _, err := range errs {
		t.Errorf("Record: %v", err)
	}
	total := int64(goroutines * perGoroutine)
	wantState(t, s, id, state(limits, total, total))
}
