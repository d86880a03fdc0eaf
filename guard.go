package agentsec

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/trust"
)

// A ToolFunc runs one tool call and reports how many tokens it used.
type ToolFunc func(ctx context.Context) (tokens int64, err error)

// maxReasonLen bounds the reason stored in an audit record, so that a
// tool's long error message cannot make its own record unwritable.
const maxReasonLen = 1024

// Guard runs fn as one governed tool call:
//
//  1. the trust gate checks req; a denial is recorded and returned;
//  2. if the audit log's last append failed, the call is denied, so a
//     broken log stops tools before they run;
//  3. one call slot of req.Session is reserved atomically; a session with
//     no slot left is denied and recorded;
//  4. fn runs;
//  5. the tokens fn reports are committed, or the slot is released if fn
//     failed or panicked;
//  6. the outcome is recorded.
//
// Guard writes exactly one "tool.call" audit record per call, and a denied
// call spends none of the session's budget. A denial is a *DeniedError
// matching ErrTrustDenied, ErrBudgetExceeded, ErrBudgetUnavailable,
// ErrAuditUnavailable or ErrInvalidRequest. If fn fails, Guard returns
// fn's error. If the final record cannot be written, Guard returns a
// *DeniedError matching ErrAuditUnavailable even though fn ran: the
// caller must not use fn's result. A panic in fn is recorded and then
// propagates.
func (s *Stack) Guard(ctx context.Context, req Request, fn ToolFunc) error {
	rec := audit.Record{Event: EventToolCall, Agent: req.Agent, Session: req.Session,
		Tool: req.Tool, Scope: req.Scope, Attrs: req.Attrs}
	if err := checkRequest(&rec); err != nil {
		sanitize(&rec)
		return s.deny(ctx, &rec, &DeniedError{Kind: ErrInvalidRequest, Tool: rec.Tool, Reason: err.Error(), Cause: err})
	}
	d := s.TrustGate.Check(req)
	rec.RequiredLevel, rec.AssignedLevel = d.RequiredName(), d.AssignedName()
	if !d.Allowed {
		return s.deny(ctx, &rec, &DeniedError{Kind: ErrTrustDenied, Tool: req.Tool, Reason: d.Reason.String(), Trust: d})
	}
	if err := s.Audit.Err(); err != nil {
		return s.deny(ctx, &rec, &DeniedError{Kind: ErrAuditUnavailable, Tool: req.Tool,
			Reason: "audit log unavailable", Trust: d, Cause: err})
	}
	res, err := s.Budget.Reserve(ctx, req.Session)
	if err != nil {
		if ee, ok := errors.AsType[*budget.ExceededError](err); ok {
			return s.deny(ctx, &rec, &DeniedError{Kind: ErrBudgetExceeded, Tool: req.Tool,
				Reason: ee.Reason(), Trust: d, Budget: ee.State})
		}
		return s.deny(ctx, &rec, &DeniedError{Kind: ErrBudgetUnavailable, Tool: req.Tool,
			Reason: "budget store unavailable", Trust: d, Cause: err})
	}
	return s.run(ctx, &rec, &res, d, fn)
}

// run calls fn under a reservation and records the outcome.
func (s *Stack) run(ctx context.Context, rec *audit.Record, res *budget.Reservation, d trust.Decision, fn ToolFunc) error {
	// Once the call has run, settling the budget and recording it must
	// not be cut short by the caller cancelling ctx.
	after := ctx
	if ctx.Done() != nil {
		after = context.WithoutCancel(ctx)
	}
	rec.Outcome = audit.OutcomeAllowed
	returned := false
	defer func() {
		if returned {
			return
		}
		// fn panicked: give the slot back and record the call, then let
		// the panic go on.
		_ = res.Release(after)
		rec.Reason = "tool panicked"
		_, _ = s.Audit.Log(after, *rec)
	}()
	tokens, callErr := fn(ctx)
	returned = true

	switch {
	case callErr != nil:
		rec.Reason = truncate("tool failed: " + callErr.Error())
		_ = res.Release(after)
	case tokens < 0:
		callErr = fmt.Errorf("agentsec: tool %q reported %d tokens", rec.Tool, tokens)
		rec.Reason = callErr.Error()
		_ = res.Release(after)
	default:
		if err := res.Commit(after, tokens); err != nil {
			callErr = fmt.Errorf("agentsec: counting tokens of tool %q: %w", rec.Tool, err)
			rec.Reason = truncate(callErr.Error())
			_ = res.Release(after)
			break
		}
		rec.Reason = d.Reason.String()
		rec.Tokens = tokens
	}
	if _, err := s.Audit.Log(after, *rec); err != nil {
		return &DeniedError{Kind: ErrAuditUnavailable, Tool: rec.Tool,
			Reason: "call could not be recorded", Trust: d, Cause: errors.Join(err, callErr)}
	}
	return callErr
}

// deny records a denied call and returns e, joined with the audit failure
// if the denial could not be recorded.
func (s *Stack) deny(ctx context.Context, rec *audit.Record, e *DeniedError) error {
	rec.Outcome = audit.OutcomeDenied
	rec.Reason = truncate(e.Reason)
	if _, err := s.Audit.Log(ctx, *rec); err != nil {
		e.Cause = errors.Join(e.Cause, err)
	}
	return e
}

// checkRequest rejects requests that name no agent, tool or session, or
// whose fields could not be recorded.
func checkRequest(rec *audit.Record) error {
	switch {
	case rec.Agent == "":
		return fmt.Errorf("agentsec: %w: empty agent id", ErrInvalidRequest)
	case rec.Tool == "":
		return fmt.Errorf("agentsec: %w: empty tool name", ErrInvalidRequest)
	}
	if err := budget.CheckSession(rec.Session); err != nil {
		return fmt.Errorf("agentsec: %w: %w", ErrInvalidRequest, err)
	}
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("agentsec: %w: %w", ErrInvalidRequest, err)
	}
	return nil
}

// sanitize makes a malformed request's record loggable: strings become
// valid UTF-8 of bounded length, and unloggable attributes are dropped.
func sanitize(rec *audit.Record) {
	for _, p := range []*string{&rec.Agent, &rec.Session, &rec.Tool, &rec.Scope} {
		*p = truncate(strings.ToValidUTF8(*p, "\uFFFD"))
	}
	if rec.Validate() != nil {
		rec.Attrs = nil
	}
}

// truncate cuts s to at most maxReasonLen bytes on a character boundary.
func truncate(s string) string {
	if len(s) <= maxReasonLen {
		return s
	}
	cut := maxReasonLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
