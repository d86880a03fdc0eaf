// Package budget enforces fixed per-session limits on tool calls and
// tokens.
//
// Each session's Limits are fixed when its budget is created and never
// change. Taking a call slot is one atomic step (Enforcer.Reserve), so any
// number of concurrent callers can never exceed a call limit; the
// reservation is then committed with the tokens the call used, or
// released. The check-then-record pair CheckBudget and RecordSpending is
// kept for callers that want it, but it is racy by nature: two callers can
// both pass the check before either records.
//
// Counters are int64; negative or overflowing token counts are errors.
// Budgets live in a Store; NewMemoryStore is the in-process one.
package budget

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Errors returned by enforcers and stores. Callers branch on them with
// errors.Is.
var (
	// ErrExceeded means the session has no call slot left: it used its
	// call limit or its token limit.
	ErrExceeded = errors.New("budget exceeded")
	// ErrUnknownSession is returned by a Store for a session whose budget
	// was never created.
	ErrUnknownSession = errors.New("unknown budget session")
	// ErrInvalidTokens means a token count was negative or would overflow
	// the session's counter.
	ErrInvalidTokens = errors.New("invalid token count")
	// ErrInvalidSession means a session id was empty, too long or not
	// valid UTF-8.
	ErrInvalidSession = errors.New("invalid session id")
	// ErrReservationClosed means a reservation was committed or released
	// already.
	ErrReservationClosed = errors.New("reservation already committed or released")
)

// MaxSessionLen is the longest session id accepted, in bytes.
const MaxSessionLen = 512

// Limits are a session's fixed limits.
type Limits struct {
	// Tokens is the most tokens the session may use. A call is allowed
	// only while fewer than Tokens have been used, so the call that
	// crosses the limit completes and the next is refused.
	Tokens int64
	// Calls is the most calls the session may make.
	Calls int64
}

// Validate reports whether both limits are positive.
func (l Limits) Validate() error {
	if l.Tokens <= 0 {
		return fmt.Errorf("budget: token limit must be positive, got %d", l.Tokens)
	}
	if l.Calls <= 0 {
		return fmt.Errorf("budget: call limit must be positive, got %d", l.Calls)
	}
	return nil
}

// Usage is what a session has used. Calls counts reserved calls that are
// not yet committed or released.
type Usage struct {
	Calls  int64
	Tokens int64
}

// State is a session's limits and usage.
type State struct {
	Limits Limits
	Used   Usage
}

// Allows reports whether the state leaves a call slot: calls used below
// the call limit and tokens used below the token limit.
func (s State) Allows() bool {
	return s.Used.Calls < s.Limits.Calls && s.Used.Tokens < s.Limits.Tokens
}

// Remaining returns the calls and tokens left, never below zero.
func (s State) Remaining() Usage {
	return Usage{
		Calls:  max(0, s.Limits.Calls-s.Used.Calls),
		Tokens: max(0, s.Limits.Tokens-s.Used.Tokens),
	}
}

// Status answers CheckBudget.
type Status struct {
	Session string
	Allowed bool
	State
	// Reason says why a session is refused; empty when Allowed.
	Reason string
}

// Reasons a Status or an ErrExceeded error gives.
const (
	ReasonCallLimit  = "call limit reached"
	ReasonTokenLimit = "token limit reached"
)

// reason returns why s refuses a call, or "" if it allows one.
func (s State) reason() string {
	switch {
	case s.Used.Calls >= s.Limits.Calls:
		return ReasonCallLimit
	case s.Used.Tokens >= s.Limits.Tokens:
		return ReasonTokenLimit
	}
	return ""
}

// ExceededError is the error Reserve returns when a session has no call
// slot left. It matches ErrExceeded with errors.Is.
type ExceededError struct {
	Session string
	State   State
}

// Error reports the session, the limit reached and the usage.
func (e *ExceededError) Error() string {
	return fmt.Sprintf("budget exceeded for session %q: %s (calls %d/%d, tokens %d/%d)",
		e.Session, e.State.reason(), e.State.Used.Calls, e.State.Limits.Calls,
		e.State.Used.Tokens, e.State.Limits.Tokens)
}

// Reason returns the limit that was reached.
func (e *ExceededError) Reason() string { return e.State.reason() }

// Unwrap returns ErrExceeded.
func (e *ExceededError) Unwrap() error { return ErrExceeded }

// CheckSession reports whether id is a valid session id: 1 to
// MaxSessionLen bytes of valid UTF-8, without NUL, which a database's
// text (PostgreSQL's) can't hold and a store can't hold as something else
// without two sessions sharing one budget.
func CheckSession(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("budget: %w: empty", ErrInvalidSession)
	case len(id) > MaxSessionLen:
		return fmt.Errorf("budget: %w: longer than %d bytes", ErrInvalidSession, MaxSessionLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("budget: %w: not valid UTF-8", ErrInvalidSession)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("budget: %w: holds a NUL", ErrInvalidSession)
	}
	return nil
}

// CheckTokens reports whether n is a valid token count and adding it to
// used stays within int64.
func CheckTokens(used, n int64) error {
	if n < 0 {
		return fmt.Errorf("budget: %w: %d is negative", ErrInvalidTokens, n)
	}
	if used > maxInt64-n {
		return fmt.Errorf("budget: %w: %d more than %d used would overflow", ErrInvalidTokens, n, used)
	}
	return nil
}

const maxInt64 = 1<<63 - 1
