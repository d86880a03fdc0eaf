package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
)

// budgetUsage is calls and tokens, used or allowed.
type budgetUsage struct {
	Tokens int64 `json:"tokens"`
	Calls  int64 `json:"calls"`
}

func usageOf(u budget.Usage) budgetUsage   { return budgetUsage{Tokens: u.Tokens, Calls: u.Calls} }
func limitsOf(l budget.Limits) budgetUsage { return budgetUsage{Tokens: l.Tokens, Calls: l.Calls} }

type budgetAnswer struct {
	Session   string      `json:"session"`
	Allowed   bool        `json:"allowed"`
	Reason    string      `json:"reason"`
	Used      budgetUsage `json:"used"`
	Limits    budgetUsage `json:"limits"`
	Remaining budgetUsage `json:"remaining"`
}

// session returns the budget session of the path's {session}: for an
// agent its own; an operator names the agent in the query (?agent=).
func (s *Server) session(q *request) (name, key, agent string, _ answer, _ bool) {
	name = q.r.PathValue("session")
	if err := checkSessionName(name); err != nil {
		return "", "", "", invalid(err.Error()), false
	}
	agent, a, ok := q.who.actingAgent(q.r.URL.Query().Get("agent"))
	if !ok {
		return "", "", "", a, false
	}
	return name, sessionKey(agent, name), agent, answer{}, true
}

func (s *Server) getBudget(ctx context.Context, q *request) answer {
	name, key, _, a, ok := s.session(q)
	if !ok {
		return a
	}
	st, err := s.Stack.Budget.CheckBudget(ctx, key)
	if err != nil {
		return budgetUnavailable(err)
	}
	return reply(http.StatusOK, budgetAnswer{Session: name, Allowed: st.Allowed, Reason: st.Reason,
		Used: usageOf(st.Used), Limits: limitsOf(st.Limits), Remaining: usageOf(st.Remaining())})
}

type reserveRequest struct {
	TTLSeconds int64 `json:"ttl_seconds"`
}

// ttl returns the time to live a caller asks for, checked.
func ttl(seconds int64) (time.Duration, error) {
	switch {
	case seconds == 0:
		return defaultTTL, nil
	case seconds < 1 || seconds > int64(maxTTL/time.Second):
		return 0, fmt.Errorf("ttl_seconds must be from 1 to %d, not %d", int64(maxTTL/time.Second), seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

type reservationAnswer struct {
	ReservationID string      `json:"reservation_id"`
	Session       string      `json:"session"`
	ExpiresAt     time.Time   `json:"expires_at"`
	DecisionID    uint64      `json:"decision_id"`
	Used          budgetUsage `json:"used"`
	Limits        budgetUsage `json:"limits"`
}

func (s *Server) reserve(ctx context.Context, q *request) answer {
	var in reserveRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	life, err := ttl(in.TTLSeconds)
	if err != nil {
		return invalid(err.Error())
	}
	name, key, agent, a, ok := s.session(q)
	if !ok {
		return a
	}
	if err := s.open.admit(agent); err != nil {
		return tooMany(err)
	}
	admitted := true
	defer func() {
		if admitted {
			s.open.unadmit(agent)
		}
	}()
	rec := audit.Record{Event: EventBudgetReserve, Agent: agent, Session: key}
	// A broken log stops reservations before they take a slot.
	if err := s.Stack.Audit.Err(); err != nil {
		return auditUnavailable(err)
	}
	res, err := s.Stack.Budget.Reserve(ctx, key)
	if err != nil {
		rec.Outcome = audit.OutcomeDenied
		var refusal answer
		if ee, exceeded := errors.AsType[*budget.ExceededError](err); exceeded {
			rec.Reason = ee.Reason()
			refusal = fail(http.StatusTooManyRequests, CodeBudgetExceeded,
				fmt.Sprintf("session %q has no call slot left: %s", name, ee.Reason())).withBudget(ee.State)
			refusal.body.(*problem).Reason = ee.Reason()
		} else {
			rec.Reason = "budget store unavailable"
			refusal = budgetUnavailable(err)
		}
		logged, lerr := s.Stack.Audit.Log(ctx, rec)
		if lerr != nil {
			return auditUnavailable(lerr)
		}
		return refusal.withDecision(logged.Seq, true)
	}
	c := &openCall{id: newID("r_"), agent: agent, session: name, key: key, expires: time.Now().Add(life), res: &res}
	rec.Outcome, rec.Reason = audit.OutcomeAllowed, "call slot reserved"
	rec.Attrs = map[string]string{"reservation": c.id, "expires": c.expires.UTC().Format(time.RFC3339)}
	logged, err := s.Stack.Audit.Log(ctx, rec)
	if err != nil {
		// Unrecorded, it must not stand.
		if rerr := res.Release(context.WithoutCancel(ctx)); rerr != nil {
			s.Log.Error("httpapi: an unrecorded reservation could not be given back; its slot stays spent", "session", key, "err", rerr)
		}
		return auditUnavailable(err)
	}
	admitted = false
	if err := s.open.add(c); err != nil {
		return tooMany(err) // settled, as spent
	}
	st := res.State()
	return reply(http.StatusCreated, reservationAnswer{ReservationID: c.id, Session: name, ExpiresAt: c.expires.UTC(),
		DecisionID: logged.Seq, Used: usageOf(st.Used), Limits: limitsOf(st.Limits)})
}

type commitRequest struct {
	Tokens int64 `json:"tokens"`
}

type settledAnswer struct {
	ReservationID string      `json:"reservation_id,omitempty"`
	DecisionID    uint64      `json:"decision_id"`
	Tokens        *int64      `json:"tokens,omitempty"`
	Used          budgetUsage `json:"used"`
	Limits        budgetUsage `json:"limits"`
}

// reservation returns the caller's open reservation of the path's {id},
// locked, or the answer why not.
func (s *Server) reservation(q *request) (*openCall, answer, bool) {
	id := q.r.PathValue("id")
	c := s.open.get(q.who.agent, id)
	if c == nil || c.isCall {
		return nil, notFound("no reservation " + quote(id) + " of this agent"), false
	}
	c.mu.Lock()
	if c.state != stateOpen {
		defer c.mu.Unlock()
		return nil, settledProblem("reservation", c), false
	}
	return c, answer{}, true
}

func (s *Server) commitReservation(ctx context.Context, q *request) answer {
	var in commitRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	if err := checkTokens("tokens", in.Tokens); err != nil {
		return invalid(err.Error())
	}
	c, a, ok := s.reservation(q)
	if !ok {
		return a
	}
	defer c.mu.Unlock()
	// The tokens were spent: they count before they are recorded, so
	// that a failure can only over-count; and once asked for, the count
	// is made whether or not the caller waits for it.
	bg := context.WithoutCancel(ctx)
	if err := c.res.Commit(bg, in.Tokens); err != nil {
		if errors.Is(err, budget.ErrInvalidTokens) {
			return invalid(err.Error())
		}
		return budgetUnavailable(err)
	}
	s.open.settle(c, stateCommitted)
	rec := audit.Record{Event: EventBudgetCommit, Agent: c.agent, Session: c.key, Outcome: audit.OutcomeAllowed,
		Reason: "tokens committed", Tokens: in.Tokens, Attrs: map[string]string{"reservation": c.id}}
	return s.record(bg, rec, func(seq uint64) answer { return s.settled(bg, c.id, c.key, seq, &in.Tokens) })
}

// record writes the record of a change already made, and answers with
// then. If the record can't be written the answer is audit_unavailable,
// with a resume that writes it: the caller's retry, with the same
// Idempotency-Key, records the change once the log takes appends again,
// without making it twice.
func (s *Server) record(ctx context.Context, rec audit.Record, then func(seq uint64) answer) answer {
	logged, err := s.Stack.Audit.Log(ctx, rec)
	if err != nil {
		a := auditUnavailableBecause("the change was made, but not recorded; retry with the same Idempotency-Key to record it", err)
		a.resume = func() answer { return s.record(ctx, rec, then) }
		return a
	}
	return then(logged.Seq)
}

func (s *Server) releaseReservation(ctx context.Context, q *request) answer {
	var in struct{}
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	c, a, ok := s.reservation(q)
	if !ok {
		return a
	}
	defer c.mu.Unlock()
	// Giving a slot back is recorded before it takes effect: an
	// unrecorded release would be budget given to the agent unseen.
	bg := context.WithoutCancel(ctx)
	logged, err := s.Stack.Audit.Log(bg, audit.Record{Event: EventBudgetRelease, Agent: c.agent, Session: c.key,
		Outcome: audit.OutcomeAllowed, Reason: "released by the caller: the tool did not run",
		Attrs: map[string]string{"reservation": c.id}})
	if err != nil {
		return auditUnavailable(err)
	}
	res := c.res
	s.open.settle(c, stateReleased)
	if err := res.Release(bg); err != nil {
		// Recorded but not given back: the slot stays spent, the
		// safe way, and the reservation is settled.
		return budgetUnavailable(err).withDecision(logged.Seq, true)
	}
	return s.settled(bg, c.id, c.key, logged.Seq, nil)
}

// settled answers a settled reservation, or spending (id ""), with the
// session's state.
func (s *Server) settled(ctx context.Context, id, key string, seq uint64, tokens *int64) answer {
	out := settledAnswer{ReservationID: id, DecisionID: seq, Tokens: tokens}
	if st, err := s.Stack.Budget.Usage(ctx, key); err == nil {
		out.Used, out.Limits = usageOf(st.Used), limitsOf(st.Limits)
	}
	return reply(http.StatusOK, out)
}

func (s *Server) recordSpending(ctx context.Context, q *request) answer {
	var in commitRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	if err := checkTokens("tokens", in.Tokens); err != nil {
		return invalid(err.Error())
	}
	_, key, agent, a, ok := s.session(q)
	if !ok {
		return a
	}
	// Refused while the log is known to be failed: the caller's retry,
	// later, counts the spending once.
	if err := s.Stack.Audit.Err(); err != nil {
		return auditUnavailable(err)
	}
	bg := context.WithoutCancel(ctx)
	if err := s.Stack.Budget.RecordSpending(bg, key, in.Tokens); err != nil {
		if errors.Is(err, budget.ErrInvalidTokens) {
			return invalid(err.Error())
		}
		return budgetUnavailable(err)
	}
	rec := audit.Record{Event: EventBudgetSpend, Agent: agent, Session: key, Outcome: audit.OutcomeAllowed,
		Reason: "spending recorded", Tokens: in.Tokens}
	return s.record(bg, rec, func(seq uint64) answer { return s.settled(bg, "", key, seq, &in.Tokens) })
}

// budgetUnavailable answers a failure of the budget store: the caller is
// told what failed, the server's log why (answer.cause).
func budgetUnavailable(err error) answer {
	a := fail(http.StatusServiceUnavailable, CodeBudgetUnavailable, "the budget store could not be asked; try again shortly")
	a.cause = err
	return a
}

// auditUnavailable answers a failure of the audit log, as
// budgetUnavailable does.
func auditUnavailable(err error) answer {
	return auditUnavailableBecause("the decision could not be recorded, so it is denied", err)
}

// auditUnreadable answers a failure to read the audit log, as
// budgetUnavailable does.
func auditUnreadable(err error) answer {
	return auditUnavailableBecause("the audit log could not be read; try again shortly", err)
}

// auditUnavailableBecause is auditUnavailable, telling the caller detail.
func auditUnavailableBecause(detail string, err error) answer {
	a := fail(http.StatusServiceUnavailable, CodeAuditUnavailable, detail)
	a.cause = err
	return a
}

func tooMany(err error) answer {
	if errors.Is(err, errClosed) {
		return fail(http.StatusServiceUnavailable, CodeBudgetUnavailable, "the server is stopping")
	}
	return fail(http.StatusTooManyRequests, CodeRateLimited, "this caller holds the most open reservations and calls it may ("+err.Error()+"); settle some first")
}

// stackFailure answers an error of the Stack that is not a denial.
func stackFailure(err error) answer {
	switch {
	case errors.Is(err, audit.ErrUnavailable):
		return auditUnavailable(err)
	case errors.Is(err, agentsec.ErrBudgetUnavailable):
		return budgetUnavailable(err)
	}
	return invalid(err.Error())
}

func quote(s string) string { return strconv.Quote(s) }
