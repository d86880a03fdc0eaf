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
