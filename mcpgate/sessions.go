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
// has touched it for the gateway's IdleTimeout: each replica holding a
// session touches it in the store at most every few seconds while it is
// used (TouchSession), and learns so when it was ended elsewhere.
type SessionStore interface {
	// SaveSession records a session once its client has initialized it.
	SaveSession(ctx context.Context, id, agent string, init []byte) error
	// LoadSession returns a session's agent and initialize parameters;
	// found is false for a session never saved, deleted, or untouched
	// for longer than idle.
	LoadSession(ctx context.Context, id string, idle time.Duration) (agent string, init []byte, found bool, err error)
	// TouchSession marks a session used now, reporting false if it is no
	// longer found (as LoadSession would not find it).
	TouchSession(ctx context.Context, id string, idle time.Duration) (alive bool, err error)
	// DeleteSession forgets a session its client ended.
	DeleteSession(ctx context.Context, id string) error
	// PruneSessions forgets the sessions untouched for longer than idle.
	PruneSessions(ctx context.Context, idle time.Duration) error
}

// touchEvery is how often a replica tells the session store that a
// session it holds is in use: often enough for the store to keep it past
// IdleTimeout, and for a replica to learn within that long that the
// session was ended elsewhere.
func (g *Gateway) touchEvery() time.Duration { return min(g.IdleTimeout/4, 15*time.Second) }

// stillShared reports whether a session this replica holds is still a
// session of the fleet, asking the store if it has not for touchEvery. A
// store that can't answer leaves the session as it is: the replica
// serves what it holds while the store is away.
func (g *Gateway) stillShared(ctx context.Context, s *httpSession) bool {
	if g.Sessions == nil {
		return true
	}
	s.mu.Lock()
	due := time.Since(s.touched) >= g.touchEvery()
	s.mu.Unlock()
	if !due {
		return true
	}
	alive, err := g.Sessions.TouchSession(ctx, s.id, g.IdleTimeout)
	if err != nil {
		g.Log.Warn("agentsec: touching a session in the session store", "session", s.id, "err", err)
		return true
	}
	if !alive {
		return false
	}
	s.mu.Lock()
	s.touched = time.Now()
	s.mu.Unlock()
	return true
}

// saveSession records the session in the gateway's SessionStore, if it
// has one, before the client learns the session is initialized.
func (g *Gateway) saveSession(id, agent string) func(context.Context, json.RawMessage) error {
	if g.Sessions == nil {
		return nil
	}
	return func(ctx context.Context, init json.RawMessage) error {
		if err := g.Sessions.SaveSession(ctx, id, agent, init); err != nil {
			g.Log.Error("agentsec: recording a session for the other replicas", "session", id, "err", err)
			return errors.New("the session could not be recorded for the gateway's other replicas; try again")
		}
		return nil
	}
}

// errNoSession is the failure to find a session anywhere; errStoreDown
// the client's view of a session store that failed (the log has why).
var (
	errNoSession = errors.New("unknown MCP session")
	errStoreDown = errors.New("the session store is unavailable; try again")
)

// takeUp returns the session with the id: this replica's, or one another
// replica began, which this one then joins. Another agent's session is as
// unknown as one that never existed.
func (g *Gateway) takeUp(ctx context.Context, id, agent string) (*httpSession, error) {
	g.mu.Lock()
	s := g.sessions[id]
	g.mu.Unlock()
	if s != nil {
		if s.agent != agent {
			return nil, errNoSession
		}
		if !g.stillShared(ctx, s) {
			// Deleted through another replica, or idle everywhere.
			g.endSession(id)
			return nil, errNoSession
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
	case !found || owner != agent:
		return nil, errNoSession
	}
	return g.startSession(id, agent, init)
}
