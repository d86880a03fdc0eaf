package mcpgate

import "time"

// An Observer watches a proxy's governed calls and its upstreams, for
// metrics. Its methods are called on the proxy's goroutines, as things
// happen, and must be quick and safe for concurrent use. Upstream names
// are the configured ones.
type Observer interface {
	// ObserveToolCall is told of a tools/call that was sent to its
	// upstream: how long the gateway's own part took — the whole call,
	// from when the gateway began to govern it to its answer's hand-off,
	// less the upstream's — and how long the upstream's exchange took.
	ObserveToolCall(upstream string, added, exchange time.Duration)
	// ObserveUpstream is told when a session's connection to an
	// upstream comes up — the server answered initialize — and when it
	// goes down: it could not be opened or initialized, a request could
	// not reach the server, or it broke (not when the session ends it). Each session
	// has connections of its own, and tells only of changes.
	ObserveUpstream(upstream string, up bool)
}

// An AuthObserver is an Observer also told of each request the Gateway
// refused for its caller: one with no credentials or bad ones, which the
// audit log does not record (anyone could send them), as well as those it
// does. Reason is one of the AuthRefused constants.
type AuthObserver interface {
	ObserveAuthRefused(reason string)
}

// Why a request was refused for its caller, as an AuthObserver is told.
const (
	AuthRefusedNoToken = "no_token"
	// AuthRefusedInvalidToken is an unknown static token, or an access
	// token forged, garbled, expired, or for another issuer or audience.
	AuthRefusedInvalidToken = "invalid_token"
	// AuthRefusedInsufficientScope is a valid access token short of a
	// required scope.
	AuthRefusedInsufficientScope = "insufficient_scope"
	// AuthRefusedNoAgent is a valid access token no agent is mapped to.
	AuthRefusedNoAgent = "no_agent"
	// AuthRefusedKeysUnavailable is an access token that could not be
	// checked: its issuer's keys can't be had.
	AuthRefusedKeysUnavailable = "keys_unavailable"
	// AuthRefusedNotSessionOwner is a valid caller presenting a session
	// another caller opened.
	AuthRefusedNotSessionOwner = "not_session_owner"
)

// AuthRefusedReasons lists the reasons an AuthObserver is told of.
var AuthRefusedReasons = []string{AuthRefusedNoToken, AuthRefusedInvalidToken, AuthRefusedInsufficientScope,
	AuthRefusedNoAgent, AuthRefusedKeysUnavailable, AuthRefusedNotSessionOwner}

// observeAuthRefused tells the Gateway's Observer, if it is an
// AuthObserver, of a request refused for its caller.
func (g *Gateway) observeAuthRefused(reason string) {
	if o, ok := g.Observer.(AuthObserver); ok {
		o.ObserveAuthRefused(reason)
	}
}

// observeUpstream tells the proxy's Observer, if any, of a change of the
// connection's state.
func (u *upstreamConn) observeUpstream(up bool) {
	o := u.r.p.Observer
	if o == nil {
		return
	}
	state := int32(stateDown)
	if up {
		state = stateUp
	}
	if u.observed.Swap(state) != state {
		o.ObserveUpstream(u.Name, up)
	}
}

// The states of a connection an Observer was told of.
const (
	_ = iota // not told yet
	stateUp
	stateDown
)
