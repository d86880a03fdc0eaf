package budget

import "context"

// A Store keeps session budgets. Every method is atomic with respect to
// the others on the same session, across all processes sharing the store,
// and safe for concurrent use. Every method but Forget and Close returns
// an error wrapping ErrUnknownSession for a session that was never
// created.
// budgettest.Run checks an implementation.
type Store interface {
	// Create makes the session's budget with limits unless it exists, and
	// returns the session's state; an existing session keeps its own
	// limits, which never change.
	Create(ctx context.Context, session string, limits Limits) (State, error)
	// Reserve takes one call slot in a single step if the state allows
	// one (State.Allows) and returns the state after. If it doesn't, it
	// returns an *ExceededError and changes nothing.
	Reserve(ctx context.Context, session string) (State, error)
	// Commit adds tokens to a session after a Reserve. The call slot
	// stays taken. Counts that are negative or would overflow are
	// ErrInvalidTokens errors and change nothing.
	Commit(ctx context.Context, session string, tokens int64) error
	// CommitWithin adds tokens after a Reserve, as Commit does, but only
	// while the session's tokens used are below its token limit — the
	// rule Reserve applies before a call, applied again to its result.
	// Otherwise it changes nothing and returns an *ExceededError: the
	// result came after other calls used the limit. The call slot stays
	// taken either way. It returns the state after.
	CommitWithin(ctx context.Context, session string, tokens int64) (State, error)
	// Release gives back one call slot taken by Reserve.
	Release(ctx context.Context, session string) error
	// Record adds one call and tokens without checking the limits: it
	// records spending that already happened.
	Record(ctx context.Context, session string, tokens int64) error
	// Get returns the session's state.
	Get(ctx context.Context, session string) (State, error)
	// Forget deletes a session's budget, once nothing will be charged to
	// it again: a later Create starts it afresh. Forgetting a session
	// that doesn't exist is not an error.
	Forget(ctx context.Context, session string) error
	// Close releases the store's resources.
	Close() error
}

// A LazyCommitter is a Store that can count a call's tokens without
// waiting for the count to reach stable storage, because a durable write
// its caller makes next, to the same database, takes the count with it:
// a crash that loses the count loses that write too. The Stack settles a
// call so when its audit log is in that database (see SyncedBy): the
// call's record is appended, durably, before its answer is delivered, so
// a count a crash forgot belongs to a call whose answer never left, as
// with a result that is withheld. It saves a call one wait for the disk.
type LazyCommitter interface {
	Store
	// CommitWithinLazily is CommitWithin, durable only once a later
	// durable write to the same database is.
	CommitWithinLazily(ctx context.Context, session string, tokens int64) (State, error)
	// SyncedBy reports whether a durable write of store — such as an
	// audit log's append — also makes this store's earlier lazy commits
	// durable: whether they share one database.
	SyncedBy(store any) bool
}
