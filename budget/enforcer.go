package budget

import (
	"context"
	"errors"
	"fmt"
)

// An Enforcer applies budgets kept in a Store. A session's budget is
// created on first use with the enforcer's default limits, or earlier with
// Open and limits of its own. An Enforcer is safe for concurrent use.
type Enforcer struct {
	store    Store
	defaults Limits
}

// NewEnforcer returns an enforcer over store whose sessions get defaults
// unless opened with other limits. It is an error for store to be nil or
// for defaults to be invalid.
func NewEnforcer(store Store, defaults Limits) (*Enforcer, error) {
	if store == nil {
		return nil, errors.New("budget: enforcer needs a store")
	}
	if err := defaults.Validate(); err != nil {
		return nil, err
	}
	return &Enforcer{store: store, defaults: defaults}, nil
}

// Defaults returns the limits new sessions get.
func (e *Enforcer) Defaults() Limits { return e.defaults }

// Store returns the enforcer's store.
func (e *Enforcer) Store() Store { return e.store }

// Open creates session's budget with limits and returns its state. If the
// session exists already it keeps the limits it was created with, and
// Open returns an error if they differ from limits.
func (e *Enforcer) Open(ctx context.Context, session string, limits Limits) (State, error) {
	st, err := e.store.Create(ctx, session, limits)
	if err != nil {
		return State{}, err
	}
	if st.Limits != limits {
		return st, fmt.Errorf("budget: session %q already exists with limits %d tokens, %d calls",
			session, st.Limits.Tokens, st.Limits.Calls)
	}
	return st, nil
}

// CheckBudget reports whether session has a call slot left. A session not
// created yet is reported with the default limits and nothing used. The
// answer can be stale by the time the caller acts on it; use Reserve to
// take a slot atomically.
func (e *Enforcer) CheckBudget(ctx context.Context, session string) (Status, error) {
	if err := CheckSession(session); err != nil {
		return Status{}, err
	}
	st, err := e.store.Get(ctx, session)
	if errors.Is(err, ErrUnknownSession) {
		st, err = State{Limits: e.defaults}, nil
	}
	if err != nil {
		return Status{}, err
	}
	return Status{Session: session, Allowed: st.Allows(), State: st, Reason: st.reason()}, nil
}

// RecordSpending records one call that used tokens, whatever the limits:
// the spending already happened. It is an error for tokens to be negative
// or to overflow the session's counter.
func (e *Enforcer) RecordSpending(ctx context.Context, session string, tokens int64) error {
	if err := CheckSession(session); err != nil {
		return err
	}
	if tokens < 0 {
		return CheckTokens(0, tokens)
	}
	err := e.store.Record(ctx, session, tokens)
	if errors.Is(err, ErrUnknownSession) {
		if _, err = e.store.Create(ctx, session, e.defaults); err != nil {
			return err
		}
		err = e.store.Record(ctx, session, tokens)
	}
	return err
}

// CommitWithin counts the tokens of a result delivered after its call's
// reservation was settled — a task's result, fetched later — under the
// rule Reservation.CommitWithin applies: only while the session's tokens
// used are below its limit. Otherwise it counts nothing and returns an
// *ExceededError, and the result must be withheld.
func (e *Enforcer) CommitWithin(ctx context.Context, session string, tokens int64) (State, error) {
	if err := CheckSession(session); err != nil {
		return State{}, err
	}
	if tokens < 0 {
		return State{}, CheckTokens(0, tokens)
	}
	return e.store.CommitWithin(ctx, session, tokens)
}

// Forget deletes session's budget once nothing will be charged to it
// again, such as when the MCP session it belongs to has ended.
func (e *Enforcer) Forget(ctx context.Context, session string) error {
	if err := CheckSession(session); err != nil {
		return err
	}
	return e.store.Forget(ctx, session)
}

// Usage returns session's state.
func (e *Enforcer) Usage(ctx context.Context, session string) (State, error) {
	if err := CheckSession(session); err != nil {
		return State{}, err
	}
	return e.store.Get(ctx, session)
}

// Reserve takes one call slot of session in a single atomic step. It
// returns an *ExceededError, which matches ErrExceeded, if the session
// has used its call limit or its token limit. The reservation must be
// committed with the tokens the call used, or released if the call did
// not happen.
func (e *Enforcer) Reserve(ctx context.Context, session string) (Reservation, error) {
	if err := CheckSession(session); err != nil {
		return Reservation{}, err
	}
	st, err := e.store.Reserve(ctx, session)
	if errors.Is(err, ErrUnknownSession) {
		if _, err = e.store.Create(ctx, session, e.defaults); err != nil {
			return Reservation{}, err
		}
		st, err = e.store.Reserve(ctx, session)
	}
	if err != nil {
		return Reservation{}, err
	}
	return Reservation{store: e.store, session: session, state: st}, nil
}

// A Reservation holds one call slot of a session until it is committed or
// released. Use it from one goroutine, and never copy it: a copy could
// give the slot back twice. go vet reports copies, as it does for
// sync.Mutex; pass a *Reservation instead. It is a value so that taking a
// slot allocates nothing.
type Reservation struct {
	_       noCopy
	store   Store
	session string
	state   State
	closed  bool
}

// Session returns the session the slot belongs to.
func (r *Reservation) Session() string { return r.session }

// State returns the session's state just after the slot was taken, or,
// once CommitWithin has settled the reservation, just after that.
func (r *Reservation) State() State { return r.state }

// Commit records that the call used tokens and keeps the call counted. It
// is an error to commit twice, to commit a released reservation, or to
// give a negative or overflowing count; after an invalid count the
// reservation is still open.
func (r *Reservation) Commit(ctx context.Context, tokens int64) error {
	if r.store == nil || r.closed {
		return fmt.Errorf("budget: %w", ErrReservationClosed)
	}
	if tokens < 0 {
		return CheckTokens(0, tokens)
	}
	if err := r.store.Commit(ctx, r.session, tokens); err != nil {
		return err
	}
	r.closed = true
	return nil
}

// CommitWithin is Commit under the rule Reserve applies before a call,
// applied again to its result: the tokens are counted only while the
// session's tokens used are below its limit. If other calls used the
// limit while this one ran, nothing is counted, the slot stays taken, and
// CommitWithin returns an *ExceededError (matching ErrExceeded): the
// result must be withheld. So a session's tokens can pass its limit by at
// most one result, however many calls run at once. Either way the
// reservation is closed; after an invalid count or a store failure it is
// still open.
func (r *Reservation) CommitWithin(ctx context.Context, tokens int64) (State, error) {
	if r.store == nil || r.closed {
		return State{}, fmt.Errorf("budget: %w", ErrReservationClosed)
	}
	if tokens < 0 {
		return State{}, CheckTokens(0, tokens)
	}
	st, err := r.store.CommitWithin(ctx, r.session, tokens)
	if err == nil || errors.Is(err, ErrExceeded) {
		r.closed, r.state = true, st
	}
	return st, err
}

// CommitWithinLazily is CommitWithin, through the store's
// CommitWithinLazily if it is a LazyCommitter: the count is durable only
// once the caller's next durable write to the same database is. Use it
// only when that write — the call's record — comes before the call's
// answer is delivered (see LazyCommitter).
func (r *Reservation) CommitWithinLazily(ctx context.Context, tokens int64) (State, error) {
	lazy, ok := r.store.(LazyCommitter)
	if !ok {
		return r.CommitWithin(ctx, tokens)
	}
	if r.closed {
		return State{}, fmt.Errorf("budget: %w", ErrReservationClosed)
	}
	if tokens < 0 {
		return State{}, CheckTokens(0, tokens)
	}
	st, err := lazy.CommitWithinLazily(ctx, r.session, tokens)
	if err == nil || errors.Is(err, ErrExceeded) {
		r.closed, r.state = true, st
	}
	return st, err
}

// Release gives the call slot back. It is an error to release twice or
// after Commit.
func (r *Reservation) Release(ctx context.Context) error {
	if r.store == nil || r.closed {
		return fmt.Errorf("budget: %w", ErrReservationClosed)
	}
	if err := r.store.Release(ctx, r.session); err != nil {
		return err
	}
	r.closed = true
	return nil
}

// noCopy makes go vet's copylocks check report copies of the struct that
// holds it.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
