package agentsec

import (
	"errors"
	"fmt"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/trust"
)

// Errors a denied call matches with errors.Is. Guard returns them inside a
// *DeniedError, which carries the decision and its reason.
var (
	// ErrTrustDenied means the trust gate refused the call: the agent's
	// level is below the tool's, the agent has no level, or no rule
	// covers the tool.
	ErrTrustDenied = errors.New("denied by trust gate")
	// ErrBudgetExceeded means the session used its call or token limit.
	// It is budget.ErrExceeded.
	ErrBudgetExceeded = budget.ErrExceeded
	// ErrBudgetUnavailable means the budget store could not be asked.
	ErrBudgetUnavailable = errors.New("budget store unavailable")
	// ErrAuditUnavailable means the decision could not be recorded, so
	// the call is denied. It is audit.ErrUnavailable.
	ErrAuditUnavailable = audit.ErrUnavailable
	// ErrInvalidRequest means the request itself was malformed.
	ErrInvalidRequest = errors.New("invalid request")
)

// A DeniedError is a call Guard refused. Kind is one of ErrTrustDenied,
// ErrBudgetExceeded, ErrBudgetUnavailable, ErrAuditUnavailable or
// ErrInvalidRequest; errors.Is matches it, and Cause when there is one.
type DeniedError struct {
	Kind   error
	Tool   string
	Reason string
	// Trust is the trust gate's decision, when the gate was asked.
	Trust trust.Decision
	// Budget is the session's state when the budget refused the call.
	Budget budget.State
	// Cause is the underlying failure, if any.
	Cause error
	// Seq is the index of the denial's audit record — its decision id,
	// which an inclusion proof proves — when Logged is set. A denial that
	// could not be recorded is not Logged.
	Seq    uint64
	Logged bool
}

// Error says which tool was denied and why.
func (e *DeniedError) Error() string {
	return fmt.Sprintf("agentsec: call to tool %q denied: %s", e.Tool, e.Reason)
}

// Unwrap returns Kind and, if set, Cause.
func (e *DeniedError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Cause}
}
