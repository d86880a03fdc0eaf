package agentsec

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"
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
//  6. the tokens fn reports are committed (Reservation.CommitWithin), or
//     the slot is released if fn failed before its call ran;
//  7. the outcome is recorded.
//
// Guard writes exactly one "tool.call" audit record per call, and a call
// denied before it runs spends none of the session's budget.
//
// A call that ran is spent. If fn fails with an error made by Spent — the
// call reached its tool, which ran or may have — the slot stays taken, the
// tokens fn reports are counted, and the record gives the error as the
// reason. Any other error from fn means the tool never ran: the slot is
// given back and the record says "tool failed".
//
// A result is delivered only while the session's tokens are within its
// limit: if the tokens fn reports are more than the stack's
// CallTokenLimit, or other calls used the session's token limit while
// this one ran, the result is withheld — Guard returns a *DeniedError
// matching ErrBudgetExceeded, the caller must not use fn's result, and the
// call is recorded as denied with the result's size in the
// "withheld_tokens" attribute. That holds for a spent call's tokens too:
// what it answered (an error's text) is then withheld. So a session's tokens pass its limit by at
// most one result, and by less than CallTokenLimit when it is set, however
// many calls run at once.
//
// A denial is a *DeniedError matching ErrInvalidRequest, ErrTrustDenied,
// ErrAuditUnavailable, ErrBudgetExceeded or ErrBudgetUnavailable, or ctx's
// error if ctx was done before the call. If fn fails, Guard returns fn's
// error. If fn reports a negative token count, the call is counted with no
// tokens and Guard returns an error matching budget.ErrInvalidTokens. If
// the final record cannot be written, Guard returns a *DeniedError
// matching ErrAuditUnavailable even though fn ran: the caller must not use
// fn's result. A panic in fn is recorded and then propagates; the call is
// spent, with no tokens, since Guard can't tell whether fn panicked before
// its call reached the tool or after (a panic is not a way to run a tool
// free of the call limit). A tool that knows its call never left returns
// an error instead.
func (s *Stack) Guard(ctx context.Context, req Request, fn ToolFunc) error {
	// The Call is Guard's alone, on its stack: it is settled once, here,
	// without its lock (a mutex once locked is moved to the heap).
	var c Call
	if err := s.begin(ctx, req, &c); err != nil {
		return err
	}
	returned := false
	defer func() {
		if !returned {
			// fn panicked, perhaps after its call ran: the slot is spent
			// and the call recorded; then the panic goes on.
			c.conclude(settling(ctx), 0, Spent(errToolPanicked))
		}
	}()
	tokens, callErr := fn(ctx)
	returned = true
	_, err := c.conclude(settling(ctx), tokens, callErr)
	return err
}

// errToolPanicked is how a call whose fn panicked is settled and recorded.
var errToolPanicked = errors.New("tool panicked")

// Begin is the first half of Guard, for a caller that runs the tool
// itself, later or elsewhere — in another process, say, that asks over
// the network: steps 1 to 4, the checks and the reservation. A denial is
// recorded and returned as Guard returns it. An allowed call has taken
// its slot and is recorded by its End; until then nothing of it is in the
// log. Every Call must be ended, with End or Abandon: one that is not
// keeps its slot, spent, and is never recorded.
func (s *Stack) Begin(ctx context.Context, req Request) (*Call, error) {
	c := new(Call)
	if err := s.begin(ctx, req, c); err != nil {
		return nil, err
	}
	return c, nil
}

// begin is Begin, into c, a zero Call.
func (s *Stack) begin(ctx context.Context, req Request, c *Call) error {
	rec, d, err := s.admit(ctx, EventToolCall, req)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.deny(context.WithoutCancel(ctx), &rec, &DeniedError{Kind: err, Tool: req.Tool,
			Reason: "request cancelled before the call", Trust: d})
	}
	c.s, c.rec, c.d = s, rec, d
	if s.observer != nil {
		c.begun = sinceEpoch()
	}
	if c.res, err = s.Budget.Reserve(ctx, req.Session); err != nil {
		if ee, ok := errors.AsType[*budget.ExceededError](err); ok {
			return s.deny(ctx, &rec, &DeniedError{Kind: ErrBudgetExceeded, Tool: req.Tool,
				Reason: ee.Reason(), Trust: d, Budget: ee.State, Cause: err})
		}
		return s.deny(ctx, &rec, &DeniedError{Kind: ErrBudgetUnavailable, Tool: req.Tool,
			Reason: "budget store unavailable", Trust: d, Cause: err})
	}
	return nil
}

// A Call is a governed tool call between Stack.Begin and its End: it has
// passed the trust gate and holds one call slot of its session. Its
// methods are safe for concurrent use; the first End or Abandon settles
// it, and later ones return ErrSettled.
type Call struct {
	s     *Stack
	rec   audit.Record
	d     trust.Decision
	begun time.Duration // when it was admitted, from epoch, for the Observer; 0 without one

	mu      sync.Mutex
	res     budget.Reservation
	settled bool
}

// ErrSettled is returned by Call.End and Call.Abandon for a call already
// ended or abandoned.
var ErrSettled = errors.New("agentsec: the call was already ended")

// Budget returns the session's state as the call's last budget step left
// it: its reservation, or, once End has counted its result, that count.
// (A call that never ran gives its slot back, and no state comes back
// with it: Budget then still returns the reservation's.)
func (c *Call) Budget() budget.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.res.State()
}

// Trust returns the trust gate's decision that admitted the call.
func (c *Call) Trust() trust.Decision { return c.d }

// Request returns the call's request as it is recorded.
func (c *Call) Request() Request {
	return Request{Agent: c.rec.Agent, Session: c.rec.Session, Tool: c.rec.Tool, Scope: c.rec.Scope, Attrs: c.rec.Attrs}
}

// End is the second half of Guard: steps 6 and 7, given what the tool
// returned — its tokens, and its error, with the meaning a ToolFunc's
// has (an error made by Spent for a call that ran). It returns the call's
// one "tool.call" record, durable, and the error Guard would return; when
// that error is a *DeniedError the caller must not use the tool's
// result. ctx's cancellation does not cut End short: the call has run.
func (c *Call) End(ctx context.Context, tokens int64, callErr error) (audit.Record, error) {
	return c.settle(settling(ctx), tokens, callErr)
}

// Abandon settles a call that will not be ended — its caller went away
// without saying what happened: the call may have run, so its slot stays
// spent, with no tokens counted, and it is recorded as allowed with
// reason. It returns the record, and an error only if the record could
// not be written (a *DeniedError matching ErrAuditUnavailable) or the
// call was settled already (ErrSettled).
func (c *Call) Abandon(ctx context.Context, reason string) (audit.Record, error) {
	rec, err := c.settle(settling(ctx), 0, Spent(errors.New(reason)))
	if err != nil && !errors.Is(err, ErrAuditUnavailable) && !errors.Is(err, ErrSettled) {
		err = nil // what it was settled with, or a withholding of no result
	}
	return rec, err
}

// settling returns ctx without its cancellation: once a call has run,
// settling its budget and recording it must not be cut short.
func settling(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

// settle settles the call once, with the tool's outcome.
func (c *Call) settle(ctx context.Context, tokens int64, callErr error) (audit.Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.settled {
		return audit.Record{}, ErrSettled
	}
	c.settled = true
	return c.conclude(ctx, tokens, callErr)
}

// conclude is settle's work, for a call settled once by its caller.
func (c *Call) conclude(ctx context.Context, tokens int64, callErr error) (audit.Record, error) {
	rec := c.rec
	rec.Outcome = audit.OutcomeAllowed
	return c.s.finish(ctx, &rec, &c.res, c.d, tokens, callErr, c.begun)
}

// admit makes the record of a request for event and applies the checks
// every governed request passes first: a well-formed request, the trust
// gate, a working audit log. A request that fails one is recorded as
// denied, and admit returns the *DeniedError.
func (s *Stack) admit(ctx context.Context, event string, req Request) (audit.Record, trust.Decision, error) {
	rec := audit.Record{Event: event, Agent: req.Agent, Session: req.Session,
		Tool: req.Tool, Scope: req.Scope, Attrs: req.Attrs}
	if err := checkRequest(&rec); err != nil {
		sanitize(&rec)
		return rec, trust.Decision{}, s.deny(ctx, &rec, &DeniedError{Kind: ErrInvalidRequest, Tool: rec.Tool, Reason: err.Error(), Cause: err})
	}
	// One configuration decides the request, and its record says which.
	live := s.TrustGate.live()
	d := live.gate.Check(trust.Request{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool})
	rec.RequiredLevel, rec.AssignedLevel = d.RequiredName(), d.AssignedName()
	// The caller's map may change before the record is written; the
	// record is of now.
	rec.Attrs = maps.Clone(rec.Attrs)
	if live.version != "" {
		if rec.Attrs == nil {
			rec.Attrs = make(map[string]string, 1)
		}
		rec.Attrs[AttrConfig] = live.version
	}
	if !d.Allowed {
		return rec, d, s.deny(ctx, &rec, &DeniedError{Kind: ErrTrustDenied, Tool: req.Tool, Reason: d.Reason.String(), Trust: d})
	}
	if err := s.Audit.Err(); err != nil {
		return rec, d, s.deny(ctx, &rec, &DeniedError{Kind: ErrAuditUnavailable, Tool: req.Tool,
			Reason: "audit log unavailable", Trust: d, Cause: err})
	}
	return rec, d, nil
}

// A SpentError is a tool's failure after its call reached the tool, which
// ran or may have: a call sent to an MCP server that then timed out, was
// cancelled by its client, or answered with an error. A ToolFunc returns
// one (made by Spent) so that Guard counts the call instead of giving its
// slot back; its message is the call's recorded reason, so it should say
// what happened.
type SpentError struct{ Err error }

// Error returns the wrapped error's message.
func (e *SpentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *SpentError) Unwrap() error { return e.Err }

// Spent marks err as the failure of a call that reached its tool (see
// SpentError). Spent(nil) is nil.
func Spent(err error) error {
	if err == nil {
		return nil
	}
	return &SpentError{Err: err}
}

// finish settles a call that ran under res, admitted at began (see
// observe), with the tool's outcome, and records it.
func (s *Stack) finish(ctx context.Context, rec *audit.Record, res *budget.Reservation, d trust.Decision, tokens int64, callErr error, began time.Duration) (audit.Record, error) {
	spent, ran := errors.AsType[*SpentError](callErr)
	switch {
	case callErr != nil && !ran:
		rec.Reason = truncate("tool failed: " + callErr.Error())
		if err := res.Release(ctx); err != nil {
			setAttr(rec, budgetErrorKey, err.Error())
		}
	case callErr != nil:
		// It ran and failed: its slot and whatever tokens it reports —
		// of an error's text, say, or of a result that came too late to
		// deliver — are spent, under the rules a result has.
		err := s.commit(ctx, rec, res, tokens)
		if de, withheld := errors.AsType[*DeniedError](err); withheld {
			// What it answered is over the budget, or its tokens could
			// not be counted: withheld too, as a result would be. The
			// record says what happened; the denial only why, for it
			// goes where the answer would have gone.
			rec.Reason = truncate(rec.Reason + "; " + spent.Error())
			de.Cause = errors.Join(de.Cause, callErr)
			callErr = de
			break
		}
		if errors.Is(err, budget.ErrInvalidTokens) {
			callErr = errors.Join(callErr, err)
		}
		// The call stays allowed, and the reason is what happened to it.
		rec.Outcome, rec.Reason = audit.OutcomeAllowed, truncate(spent.Error())
	default:
		rec.Reason = d.Reason.String()
		callErr = s.commit(ctx, rec, res, tokens)
	}
	logged, err := s.record(ctx, rec, callErr, began)
	if err != nil {
		return audit.Record{}, &DeniedError{Kind: ErrAuditUnavailable, Tool: rec.Tool,
			Reason: "call could not be recorded", Trust: d, Cause: errors.Join(err, callErr)}
	}
	if de, ok := errors.AsType[*DeniedError](callErr); ok {
		de.Seq, de.Logged = logged.Seq, true
	}
	return logged, callErr
}

// Attributes a Stack sets on records.
const (
	// withheldKey holds the tokens of a result that was withheld.
	withheldKey = "withheld_tokens"
)

// commit counts the tokens of a call that ran, if its result may be
// delivered, and returns why not otherwise: a *DeniedError matching
// ErrBudgetExceeded when the result is over CallTokenLimit or came after
// the session's token limit was used (the slot stays taken, no tokens are
// counted, and the record becomes a denial), one matching
// ErrBudgetUnavailable when the store fails (the slot stays taken, so the
// session can only be over-counted). A count that is negative or would
// overflow the session's counter is a bug in the tool: the call is
// counted with no tokens and the error returned.
func (s *Stack) commit(ctx context.Context, rec *audit.Record, res *budget.Reservation, tokens int64) error {
	var tokenErr error
	if tokens < 0 {
		tokenErr = fmt.Errorf("agentsec: tool %q reported %d tokens: %w", rec.Tool, tokens, budget.ErrInvalidTokens)
		tokens = 0
	}
	if reason, over := s.overCeiling(tokens); over {
		return s.withhold(ctx, rec, res, tokens, reason)
	}
	st, err := s.commitWithin(ctx, res, tokens)
	if errors.Is(err, budget.ErrInvalidTokens) {
		tokenErr = fmt.Errorf("agentsec: tool %q reported %d tokens: %w", rec.Tool, tokens, err)
		tokens = 0
		st, err = s.commitWithin(ctx, res, 0)
	}
	if errors.Is(err, budget.ErrExceeded) {
		rec.Outcome, rec.Reason = audit.OutcomeDenied, limitUsed(st)
		setAttr(rec, withheldKey, strconv.FormatInt(tokens, 10))
		return &DeniedError{Kind: ErrBudgetExceeded, Tool: rec.Tool, Reason: rec.Reason, Budget: st, Cause: err}
	}
	if err != nil {
		setAttr(rec, budgetErrorKey, err.Error())
		setAttr(rec, withheldKey, strconv.FormatInt(tokens, 10))
		rec.Outcome, rec.Reason = audit.OutcomeDenied, "result withheld: the call's tokens could not be counted"
		return &DeniedError{Kind: ErrBudgetUnavailable, Tool: rec.Tool,
			Reason: "the call's tokens could not be counted", Cause: errors.Join(err, tokenErr)}
	}
	rec.Tokens = tokens
	if tokenErr != nil {
		rec.Reason = truncate(tokenErr.Error())
	}
	return tokenErr
}

// overCeiling reports whether a result of tokens is over CallTokenLimit,
// and the reason it is then withheld.
func (s *Stack) overCeiling(tokens int64) (string, bool) {
	if s.callTokenLimit <= 0 || tokens <= s.callTokenLimit {
		return "", false
	}
	return fmt.Sprintf("result withheld: %d tokens, more than the %d one call may return", tokens, s.callTokenLimit), true
}

// limitUsed is why a result is withheld that came once the session had
// used its token limit.
func limitUsed(st budget.State) string {
	return fmt.Sprintf("result withheld: the session used its token limit (%d of %d) while it was on its way",
		st.Used.Tokens, st.Limits.Tokens)
}

// withhold settles a call whose result is too big to deliver: its slot
// stays spent with no tokens counted, and its record is a denial.
func (s *Stack) withhold(ctx context.Context, rec *audit.Record, res *budget.Reservation, tokens int64, reason string) error {
	rec.Outcome = audit.OutcomeDenied
	rec.Reason = reason
	setAttr(rec, withheldKey, strconv.FormatInt(tokens, 10))
	st, err := s.commitWithin(ctx, res, 0)
	if err != nil && !errors.Is(err, budget.ErrExceeded) {
		setAttr(rec, budgetErrorKey, err.Error())
	}
	return &DeniedError{Kind: ErrBudgetExceeded, Tool: rec.Tool, Reason: reason, Budget: st}
}

// commitWithin settles a call's reservation with its tokens. Its caller
// appends the call's record next, before the call's answer leaves: so
// the count may be a lazy one, made durable by that append (see
// budget.LazyCommitter).
func (s *Stack) commitWithin(ctx context.Context, res *budget.Reservation, tokens int64) (budget.State, error) {
	if s.lazyCommits {
		return res.CommitWithinLazily(ctx, tokens)
	}
	return res.CommitWithin(ctx, tokens)
}

// Refuse records a call refused before it reached the trust gate — one
// the caller could not govern, such as a tools/call sent as a JSON-RPC
// notification, or a call to a tool no server offered — and returns the
// *DeniedError, matching ErrInvalidRequest, with the reason.
func (s *Stack) Refuse(ctx context.Context, req Request, reason string) error {
	rec := audit.Record{Event: EventToolCall, Agent: req.Agent, Session: req.Session,
		Tool: req.Tool, Scope: req.Scope, Attrs: req.Attrs}
	if checkRequest(&rec) != nil {
		sanitize(&rec)
	}
	return s.deny(ctx, &rec, &DeniedError{Kind: ErrInvalidRequest, Tool: rec.Tool, Reason: reason})
}

// DeliverResult decides whether a result that comes after its call's own
// record — a task's result, fetched once the task is done — may reach the
// caller, by the rules Guard applies to a call and its result: only if
// the agent still holds the tool's level, the result is within
// CallTokenLimit, the session's tokens are below its limit when it is
// counted, and the decision is recorded (a "tool.result" record, with the
// result's tokens). It returns nil when the result may be delivered, and
// otherwise a *DeniedError matching ErrTrustDenied, ErrBudgetExceeded,
// ErrBudgetUnavailable, ErrAuditUnavailable or ErrInvalidRequest; the
// result must then be withheld.
func (s *Stack) DeliverResult(ctx context.Context, req Request, tokens int64) error {
	// The agent must still hold the level the call needed: a level
	// revoked while a task ran stops its result.
	rec, d, err := s.admit(ctx, EventToolResult, req)
	if err != nil {
		return err
	}
	tokens = max(tokens, 0)
	withheld := func(e *DeniedError) error {
		setAttr(&rec, withheldKey, strconv.FormatInt(tokens, 10))
		e.Tool, e.Trust = req.Tool, d
		return s.deny(ctx, &rec, e)
	}
	if reason, over := s.overCeiling(tokens); over {
		return withheld(&DeniedError{Kind: ErrBudgetExceeded, Reason: reason})
	}
	st, err := s.Budget.CommitWithin(ctx, req.Session, tokens)
	switch {
	case errors.Is(err, budget.ErrExceeded):
		return withheld(&DeniedError{Kind: ErrBudgetExceeded, Reason: limitUsed(st), Budget: st, Cause: err})
	case err != nil:
		setAttr(&rec, budgetErrorKey, err.Error())
		return withheld(&DeniedError{Kind: ErrBudgetUnavailable, Reason: "the result's tokens could not be counted", Cause: err})
	}
	rec.Outcome, rec.Tokens, rec.Reason = audit.OutcomeAllowed, tokens, "result delivered"
	if _, err := s.record(ctx, &rec, nil, 0); err != nil {
		return &DeniedError{Kind: ErrAuditUnavailable, Tool: rec.Tool, Reason: "result could not be recorded", Cause: err}
	}
	return nil
}

// deny records a denied call and returns e, joined with the audit failure
// if the denial could not be recorded.
func (s *Stack) deny(ctx context.Context, rec *audit.Record, e *DeniedError) error {
	rec.Outcome = audit.OutcomeDenied
	rec.Reason = truncate(e.Reason)
	logged, err := s.record(ctx, rec, e, 0)
	if err != nil {
		e.Cause = errors.Join(e.Cause, err)
		return e
	}
	e.Seq, e.Logged = logged.Seq, true
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
