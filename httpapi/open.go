package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
)

// Events the API records besides a Stack's own.
const (
	EventBudgetReserve = "budget.reserve"
	EventBudgetCommit  = "budget.commit"
	EventBudgetRelease = "budget.release"
	EventBudgetExpire  = "budget.expire"
	EventBudgetSpend   = "budget.spend"
)

// Bounds on open reservations and calls.
const (
	defaultTTL = 5 * time.Minute
	maxTTL     = time.Hour
	// remembered is how long a settled reservation or call is
	// remembered, so that a late commit or end is told it is settled
	// (conflict) rather than unknown; at most maxRemembered of each
	// agent's are, so that no agent's crowd out another's.
	remembered    = time.Hour
	maxRemembered = 10_000
)

// A state is where an open reservation or call is in its life.
type state int

const (
	stateOpen state = iota
	stateCommitted
	stateReleased
	stateEnded
	stateExpired
)

func (st state) String() string {
	return [...]string{"open", "committed", "released", "ended", "expired"}[st]
}

// An openCall is a reservation (call == nil) or a call begun with
// POST /v1/calls, from its start until it is settled.
type openCall struct {
	id      string
	isCall  bool // a call, not a reservation
	agent   string
	session string // the agent's name for it
	key     string // the budget session
	expires time.Time

	mu    sync.Mutex
	state state
	res   *budget.Reservation // a reservation's slot, while open
	call  *agentsec.Call      // a call's, while open
	timer *time.Timer
	// settledAt is when it stopped being open.
	settledAt time.Time
	// unrecorded says a call's end could not be recorded: its result
	// was denied.
	unrecorded bool
}

// openCalls holds the open reservations and calls, and remembers the
// settled ones for a while.
type openCalls struct {
	s       *Server
	mu      sync.Mutex
	byID    map[string]*openCall
	perWho  map[string]int         // open ones, by agent
	settled map[string][]*openCall // by agent, in the order they settled, to forget
	closed  bool
}

func newOpenCalls(s *Server) *openCalls {
	return &openCalls{s: s, byID: map[string]*openCall{}, perWho: map[string]int{}, settled: map[string][]*openCall{}}
}

// newID makes an unguessable id with a prefix saying what it names.
func newID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// errTooMany refuses a caller holding MaxOpen.
var errTooMany = errors.New("too many open reservations and calls")

// errClosed refuses a reservation or call after Close.
var errClosed = errors.New("the server is stopping")

// admit counts one more open for agent, if it may hold it.
func (o *openCalls) admit(agent string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.closed:
		return errClosed
	case o.perWho[agent] >= o.s.MaxOpen:
		return errTooMany
	}
	o.perWho[agent]++
	return nil
}

// unadmit undoes admit for one that was not added.
func (o *openCalls) unadmit(agent string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.perWho[agent]--
	if o.perWho[agent] == 0 {
		delete(o.perWho, agent)
	}
}

// add registers c, admitted, and starts its expiry. One added after
// closeAll began is settled at once, as closeAll settles the others, and
// add returns errClosed.
func (o *openCalls) add(c *openCall) error {
	o.mu.Lock()
	o.byID[c.id] = c
	closed := o.closed
	o.mu.Unlock()
	if closed {
		o.expireWith(context.Background(), c, stoppedReason)
		return errClosed
	}
	c.mu.Lock()
	c.timer = time.AfterFunc(time.Until(c.expires), func() { o.expire(c) })
	c.mu.Unlock()
	return nil
}

// stoppedReason is the recorded reason of what was open when the server
// stopped.
const stoppedReason = "the server stopped before it was settled; counted as spent"

// get returns agent's reservation or call id; another agent's is not
// found, as an unknown one is.
func (o *openCalls) get(agent, id string) *openCall {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.byID[id]
	if c == nil || c.agent != agent {
		return nil
	}
	return c
}

// settle marks c, locked by the caller, settled in st, and frees its
// place.
func (o *openCalls) settle(c *openCall, st state) {
	c.state, c.settledAt = st, time.Now()
	if c.timer != nil {
		c.timer.Stop()
	}
	// What is remembered of it is its id, owner and state, not its
	// request.
	c.res, c.call = nil, nil
	o.mu.Lock()
	defer o.mu.Unlock()
	o.perWho[c.agent]--
	if o.perWho[c.agent] == 0 {
		delete(o.perWho, c.agent)
	}
	// Forget the agent's oldest settled ones past their time, or past
	// the bound.
	settled := append(o.settled[c.agent], c)
	n := 0
	for n < len(settled) && (len(settled)-n > maxRemembered || time.Since(settled[n].settledAt) > remembered) {
		delete(o.byID, settled[n].id)
		n++
	}
	if n > 0 {
		settled = append(settled[:0], settled[n:]...)
	}
	o.settled[c.agent] = settled
}

// expire settles c if it is still open when its time is up: as spent,
// for its caller may have run the tool, and recorded so.
func (o *openCalls) expire(c *openCall) {
	o.expireWith(context.Background(), c, fmt.Sprintf("expired: not settled by %s; counted as spent", c.expires.UTC().Format(time.RFC3339)))
}

func (o *openCalls) expireWith(ctx context.Context, c *openCall, reason string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return nil
	}
	var err error
	if c.isCall {
		_, err = c.call.Abandon(ctx, reason)
	} else {
		// The slot stays taken: nothing to give back.
		_, err = o.s.Stack.Audit.Log(ctx, audit.Record{Event: EventBudgetExpire, Agent: c.agent, Session: c.key,
			Reason: reason, Attrs: map[string]string{"reservation": c.id}})
	}
	o.settle(c, stateExpired)
	if err != nil {
		o.s.Log.Error("httpapi: an expired reservation or call could not be recorded; its slot stays spent",
			"id", c.id, "agent", c.agent, "session", c.key, "err", err)
	}
	return err
}

// closeAll expires every open reservation and call, recorded as spent
// because the server stopped, and refuses new ones.
func (o *openCalls) closeAll(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	var open []*openCall
	for _, c := range o.byID {
		open = append(open, c)
	}
	o.mu.Unlock()
	// Many at once, so that the log commits their records together.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 64)
	)
	for _, c := range open {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := o.expireWith(ctx, c, stoppedReason); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// settledProblem is the conflict answer for c, settled already.
func settledProblem(what string, c *openCall) answer {
	if c.unrecorded {
		return conflict(fmt.Sprintf("%s %s is %s already, but its record could not be written: its result must not be used", what, c.id, c.state))
	}
	return conflict(fmt.Sprintf("%s %s is %s already", what, c.id, c.state))
}
