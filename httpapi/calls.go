package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
)

type beginRequest struct {
	Tool       string            `json:"tool"`
	Session    string            `json:"session"`
	Scope      *string           `json:"scope"`
	Attrs      map[string]string `json:"attrs"`
	TTLSeconds int64             `json:"ttl_seconds"`
}

type beginAnswer struct {
	CallID        string    `json:"call_id"`
	Session       string    `json:"session"`
	Tool          string    `json:"tool"`
	ExpiresAt     time.Time `json:"expires_at"`
	RequiredLevel string    `json:"required_level"`
	AssignedLevel string    `json:"assigned_level"`
}

// beginCall is Guard's first half (Stack.Begin) for a caller in another
// process.
func (s *Server) beginCall(ctx context.Context, q *request) answer {
	var in beginRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	life, err := ttl(in.TTLSeconds)
	if err != nil {
		return invalid(err.Error())
	}
	if err := checkSessionName(in.Session); err != nil {
		return invalid(err.Error())
	}
	if err := checkAttrs(in.Attrs); err != nil {
		return invalid(err.Error())
	}
	scope, a, ok := q.who.actingScope(in.Scope)
	if !ok {
		return a
	}
	agent := q.who.agent
	if err := s.open.admit(agent); err != nil {
		return tooMany(err)
	}
	req := agentsec.Request{Agent: agent, Session: sessionKey(agent, in.Session), Tool: in.Tool, Scope: scope, Attrs: in.Attrs}
	call, err := s.Stack.Begin(ctx, req)
	if err != nil {
		s.open.unadmit(agent)
		return denial(err)
	}
	c := &openCall{id: newID("c_"), agent: agent, session: in.Session, key: req.Session,
		expires: time.Now().Add(life), call: call, isCall: true}
	if err := s.open.add(c); err != nil {
		return tooMany(err) // settled, as spent
	}
	d := call.Trust()
	return reply(http.StatusCreated, beginAnswer{CallID: c.id, Session: in.Session, Tool: in.Tool,
		ExpiresAt: c.expires.UTC(), RequiredLevel: d.RequiredName(), AssignedLevel: d.AssignedName()})
}

type endRequest struct {
	Tokens int64   `json:"tokens"`
	Error  *string `json:"error"`
	// Ran says the tool ran, or may have, before it failed; default true.
	Ran *bool `json:"ran"`
}

type endAnswer struct {
	CallID     string        `json:"call_id"`
	DecisionID uint64        `json:"decision_id"`
	Outcome    audit.Outcome `json:"outcome"`
	Reason     string        `json:"reason"`
	Tokens     int64         `json:"tokens"`
	Used       budgetUsage   `json:"used"`
	Limits     budgetUsage   `json:"limits"`
}

// endCall is Guard's second half (Call.End).
func (s *Server) endCall(ctx context.Context, q *request) answer {
	var in endRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	if err := checkTokens("tokens", in.Tokens); err != nil {
		return invalid(err.Error())
	}
	if in.Error == nil && in.Ran != nil {
		return invalid("\"ran\" goes with \"error\": it says whether a failed tool ran")
	}
	id := q.r.PathValue("id")
	c := s.open.get(q.who.agent, id)
	if c == nil || !c.isCall {
		return notFound("no call " + quote(id) + " of this agent")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return settledProblem("call", c)
	}
	var callErr error
	released := in.Error != nil && in.Ran != nil && !*in.Ran
	if in.Error != nil {
		callErr = errors.New(*in.Error)
		if !released {
			callErr = agentsec.Spent(callErr)
		}
	}
	call := c.call // settle forgets it
	rec, err := call.End(ctx, in.Tokens, callErr)
	s.open.settle(c, stateEnded)
	if de, denied := errors.AsType[*agentsec.DeniedError](err); denied {
		// The result is withheld, or its record could not be written:
		// either way the caller must not use it. A retry of this end,
		// with its Idempotency-Key, hears the same — a 503 included,
		// which is otherwise not remembered — not "ended already",
		// which would read as a success.
		a := denial(err)
		if errors.Is(de, agentsec.ErrAuditUnavailable) {
			c.unrecorded = true // the record is lost with the log's failure
		}
		if a.status >= 500 { // a 4xx is remembered as it is
			a.resume = func() answer { return a }
		}
		return a
	}
	out := endAnswer{CallID: c.id, DecisionID: rec.Seq, Outcome: rec.Outcome, Reason: rec.Reason, Tokens: rec.Tokens}
	// The count that settled the call says how the session stands: no
	// second trip to the budget store, except for a slot given back.
	st, err := call.Budget(), error(nil)
	if released {
		st, err = s.Stack.Budget.Usage(ctx, c.key)
	}
	if err == nil {
		out.Used, out.Limits = usageOf(st.Used), limitsOf(st.Limits)
	}
	return reply(http.StatusOK, out)
}

// denial answers a Stack's *DeniedError, or another of its errors.
func denial(err error) answer {
	de, ok := errors.AsType[*agentsec.DeniedError](err)
	if !ok {
		return stackFailure(err)
	}
	var a answer
	switch {
	case errors.Is(de, agentsec.ErrTrustDenied):
		a = fail(http.StatusForbidden, CodeTrustDenied, fmt.Sprintf("tool %q: %s", de.Tool, de.Reason))
	case errors.Is(de, agentsec.ErrBudgetExceeded):
		a = fail(http.StatusTooManyRequests, CodeBudgetExceeded, fmt.Sprintf("tool %q: %s", de.Tool, de.Reason)).withBudget(de.Budget)
	case errors.Is(de, agentsec.ErrAuditUnavailable):
		a = fail(http.StatusServiceUnavailable, CodeAuditUnavailable, fmt.Sprintf("tool %q: %s", de.Tool, de.Reason))
	case errors.Is(de, agentsec.ErrBudgetUnavailable):
		a = fail(http.StatusServiceUnavailable, CodeBudgetUnavailable, fmt.Sprintf("tool %q: %s", de.Tool, de.Reason))
	case errors.Is(de, context.Canceled), errors.Is(de, context.DeadlineExceeded):
		a = fail(http.StatusServiceUnavailable, CodeBudgetUnavailable, "the request was cancelled before the call")
	default:
		a = invalid(de.Reason)
	}
	p := a.body.(*problem)
	p.Reason = de.Reason
	if de.Trust.Tool != "" {
		p.RequiredLevel, p.AssignedLevel = de.Trust.RequiredName(), de.Trust.AssignedName()
	}
	return a.withDecision(de.Seq, de.Logged)
}
