package agentsec

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/trust"
)

// A ToolFunc runs one tool call and reports how many tokens it used.
type ToolFunc func(ctx context.Context) (tokens int64, err error)

// Limits on a request's fields, so that its audit record can always be
// written: together they stay far below audit.MaxRecordSize.
const (
	maxIDLen       = 256            // agent, tool and scope, in bytes
	maxAttrs       = 64             // attributes per request
	maxAttrsBytes  = 16 << 10       // keys and values together
	maxReasonLen   = 1024           // a stored reason, in bytes
	budgetErrorKey = "budget_error" // attribute naming a budget store failure
)

// Guard runs fn as one governed tool call:
//
//  1. the request is checked: an agent, a tool and a session, each of
//     bounded size and valid UTF-8;
//  2. the trust gate checks it; a denial is recorded and returned;
//  3. if the audit log's last append failed, the call is denied, so a
//     broken log stops tools before they run;
//  4. one call slot of req.Session is reserved atomically; a session with
//     no slot left is denied and recorded;
//  5. fn runs, unless ctx is already done;
//  6. the tokens fn reports are committed, or the slot is released if fn
//     failed or panicked;
//  7. the outcome is recorded.
//
// Guard writes exactly one "tool.call" audit record per call, and a denied
// call spends none of the session's budget. A denial is a *DeniedError
// matching ErrInvalidRequest, ErrTrustDenied, ErrAuditUnavailable,
// ErrBudgetExceeded or ErrBudgetUnavailable, or ctx's error if ctx was
// done before the call. If fn fails, Guard returns fn's error. If fn
// reports a negative token count, the call is counted with no tokens and
// Guard returns an error matching budget.ErrInvalidTokens. If the final
// record cannot be written, Guard returns a *DeniedError matching
// ErrAuditUnavailable even though fn ran: the caller must not use fn's
// result. A panic in fn is recorded and then propagates.
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
	if err := ctx.Err(); err != nil {
		return s.deny(context.WithoutCancel(ctx), &rec, &DeniedError{Kind: err, Tool: req.Tool,
			Reason: "request cancelled before the call", Trust: d})
	}
	res, err := s.Budget.Reserve(ctx, req.Session)
	if err != nil {
		if ee, ok := errors.AsType[*budget.ExceededError](err); ok {
			return s.deny(ctx, &rec, &DeniedError{Kind: ErrBudgetExceeded, Tool: req.Tool,
				Reason: ee.Reason(), Trust: d, Budget: ee.State, Cause: err})
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
		rec.Reason = "tool panicked"
		if err := res.Release(after); err != nil {
			setAttr(rec, budgetErrorKey, err.Error())
		}
		_, _ = s.Audit.Log(after, *rec)
	}()
	tokens, callErr := fn(ctx)
	returned = true

	if callErr != nil {
		rec.Reason = truncate("tool failed: " + callErr.Error())
		if err := res.Release(after); err != nil {
			setAttr(rec, budgetErrorKey, err.Error())
		}
	} else {
		rec.Reason = d.Reason.String()
		callErr = s.commit(after, rec, res, tokens)
	}
	if _, err := s.Audit.Log(after, *rec); err != nil {
		return &DeniedError{Kind: ErrAuditUnavailable, Tool: rec.Tool,
			Reason: "call could not be recorded", Trust: d, Cause: errors.Join(err, callErr)}
	}
	return callErr
}

// commit counts a call that ran and reported tokens. A count that is
// negative or would overflow the session's counter is a bug in the tool:
// the call is counted with no tokens and the error returned. If the budget
// store fails, the slot stays taken, so the session can only be
// over-counted.
func (s *Stack) commit(ctx context.Context, rec *audit.Record, res *budget.Reservation, tokens int64) error {
	var tokenErr error
	if tokens < 0 {
		tokenErr = fmt.Errorf("agentsec: tool %q reported %d tokens: %w", rec.Tool, tokens, budget.ErrInvalidTokens)
		tokens = 0
	}
	err := res.Commit(ctx, tokens)
	if errors.Is(err, budget.ErrInvalidTokens) {
		tokenErr = fmt.Errorf("agentsec: tool %q reported %d tokens: %w", rec.Tool, tokens, err)
		tokens = 0
		err = res.Commit(ctx, 0)
	}
	if err != nil {
		setAttr(rec, budgetErrorKey, err.Error())
		return &DeniedError{Kind: ErrBudgetUnavailable, Tool: rec.Tool,
			Reason: "the call's tokens could not be counted", Cause: errors.Join(err, tokenErr)}
	}
	rec.Tokens = tokens
	if tokenErr != nil {
		rec.Reason = truncate(tokenErr.Error())
	}
	return tokenErr
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
		return fmt.Errorf("%w: empty agent id", ErrInvalidRequest)
	case rec.Tool == "":
		return fmt.Errorf("%w: empty tool name", ErrInvalidRequest)
	case len(rec.Agent) > maxIDLen, len(rec.Tool) > maxIDLen, len(rec.Scope) > maxIDLen:
		return fmt.Errorf("%w: agent, tool and scope are limited to %d bytes", ErrInvalidRequest, maxIDLen)
	case len(rec.Attrs) > maxAttrs:
		return fmt.Errorf("%w: %d attributes, more than %d", ErrInvalidRequest, len(rec.Attrs), maxAttrs)
	}
	n := 0
	for k, v := range rec.Attrs {
		n += len(k) + len(v)
	}
	if n > maxAttrsBytes {
		return fmt.Errorf("%w: attributes of %d bytes, more than %d", ErrInvalidRequest, n, maxAttrsBytes)
	}
	if err := budget.CheckSession(rec.Session); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return nil
}

// sanitize makes a malformed request's record loggable: strings become
// valid UTF-8 of bounded length, and the attributes are dropped.
func sanitize(rec *audit.Record) {
	for _, p := range []*string{&rec.Agent, &rec.Session, &rec.Tool, &rec.Scope} {
		*p = truncate(*p)
	}
	rec.Attrs = nil
}

// setAttr sets an attribute on rec without changing the caller's map.
func setAttr(rec *audit.Record, key, value string) {
	rec.Attrs = maps.Clone(rec.Attrs)
	if rec.Attrs == nil {
		rec.Attrs = map[string]string{}
	}
	rec.Attrs[key] = truncate(value)
}

// truncate makes s valid UTF-8 and cuts it to at most maxReasonLen bytes
// on a character boundary.
func truncate(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= maxReasonLen {
		return s
	}
	cut := maxReasonLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
