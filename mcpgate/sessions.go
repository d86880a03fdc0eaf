package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// A SessionStore shares a Gateway's MCP sessions with the other replicas
// of a fleet, so that a load balancer may send each request of a session
// to any of them: the session's budget is kept in a shared budget store
// already, and the SessionStore keeps what a replica needs to take the
// session up — its agent and the client's initialize parameters. A replica
// that gets a request for a session it doesn't hold loads it, connects to
// the upstreams afresh and initializes them as the client initialized the
// session, and serves the request.
//
// What a replica holds of a session beyond that stays with it: a GET
// stream, and the resource subscriptions made through it, reach the client
// only through the replica the client opened them on.
//
// A session ends everywhere when its client deletes it, or when no replica
// has used it for the gateway's IdleTimeout: every few seconds each
// replica marks the sessions it used meanwhile, or is still serving, as
// used, and learns which of those it holds were ended elsewhere
// (RefreshSessions).
//
// Budgets: without a SessionStore a Gateway forgets a session's budget
// when the session ends. With one, other replicas may still hold the
// session until their next refresh, and must charge it to the budget it
// had, never a fresh one; so the store forgets the budget, in
// PruneSessions, once no replica can still hold the session. A store
// whose budgets live elsewhere forgets nothing.
type SessionStore interface {
	// SaveSession records a session once its client has initialized it,
	// with its owner: the agent's id, followed, for a session an OAuth
	// token opened, by a digest of the token's issuer and subject. A
	// request's caller must be the same owner to use the session.
	SaveSession(ctx context.Context, id, owner string, init []byte) error
	// LoadSession returns a session's owner and initialize parameters;
	// found is false for a session never saved, deleted, or untouched
	// for longer than idle.
	LoadSession(ctx context.Context, id string, idle time.Duration) (owner string, init []byte, found bool, err error)
	// RefreshSessions marks the sessions of used as used now, and returns
	// those of held (which includes used) that are no longer found, as
	// LoadSession would not find them.
	RefreshSessions(ctx context.Context, held, used []string, idle time.Duration) (gone []string, err error)
	// DeleteSession forgets a session its client ended.
	DeleteSession(ctx context.Context, id string) error
	// PruneSessions forgets the sessions that ended or went idle long
	// enough ago that no replica holds them any more — at least idle
	// after — and their budgets, if it keeps them.
	PruneSessions(ctx context.Context, idle time.Duration) error
}

// refreshEvery is how often a replica tells the session store which
// sessions it used (RefreshSessions): often enough for the store to keep
// them past IdleTimeout, and for the replica to learn within that long
// that a session it holds was ended elsewhere.
func (g *Gateway) refreshEvery() time.Duration { return min(g.IdleTimeout/4, 15*time.Second) }

// refreshShared tells the session store which of the sessions this
// replica holds it used since the last refresh, and ends those that were
// ended elsewhere. A store that can't answer leaves the sessions as they
// are: the replica serves what it holds while the store is away.
func (g *Gateway) refreshShared(held, used []string) {
	if g.Sessions == nil || len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.refreshEvery())
	defer cancel()
	gone, err := g.Sessions.RefreshSessions(ctx, held, used, g.IdleTimeout)
	if err != nil {
		g.Log.Warn("agentsec: refreshing sessions in the session store", "sessions", len(held), "err", err)
		return
	}
	for _, id := range gone {
		g.Log.Info("agentsec: ending a session ended through another replica", "session", id)
		g.endSession(id)
	}
}

// saveSession records the session in the gateway's SessionStore, if it
// has one, before the client learns the session is initialized.
func (g *Gateway) saveSession(s *httpSession, owner string) func(context.Context, json.RawMessage) error {
	if g.Sessions == nil {
		return nil
	}
	id := s.id
	return func(ctx context.Context, init json.RawMessage) error {
		if err := g.Sessions.SaveSession(ctx, id, owner, init); err != nil {
			g.Log.Error("agentsec: recording a session for the other replicas", "session", id, "err", err)
			return errors.New("the session could not be recorded for the gateway's other replicas; try again")
		}
		s.saved.Store(true)
		return nil
	}
}

// errNoSession is the failure to find a session anywhere; errStoreDown
// the client's view of a session store that failed (the log has why).
var (
	errNoSession = errors.New("unknown MCP session")
	errStoreDown = errors.New("the session store is unavailable; try again")
)

// A notOwnerError is a session found, but another caller's. The client
// is told no more than for a session that does not exist (errNoSession):
// an id it could only have from a leak is not confirmed to it.
type notOwnerError struct{ owner string }

func (e *notOwnerError) Error() string { return errNoSession.Error() }
func (e *notOwnerError) Unwrap() error { return errNoSession }

// takeUp returns the session with the id: this replica's, or one another
// replica began, which this one then joins. Another agent's session is as
// unknown as one that never existed.
func (g *Gateway) takeUp(ctx context.Context, id string, c caller) (*httpSession, error) {
	g.mu.Lock()
	s := g.sessions[id]
	g.mu.Unlock()
	if s != nil {
		if s.owner != c.owner {
			return nil, &notOwnerError{owner: s.owner}
		}
		return s, nil
	}
	if g.Sessions == nil {
		return nil, errNoSession
	}
	owner, init, found, err := g.Sessions.LoadSession(ctx, id, g.IdleTimeout)
	switch {
	case err != nil:
		g.Log.Error("agentsec: loading a session of another replica", "session", id, "err", err)
		return nil, errStoreDown
	case !found:
		return nil, errNoSession
	case owner != c.owner:
		return nil, &notOwnerError{owner: owner}
	}
	return g.startSession(id, c, init)
}
