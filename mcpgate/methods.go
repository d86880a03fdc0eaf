package mcpgate

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The gateway relays what it understands and refuses what it cannot
// govern. This file is that policy at a glance: every method a client
// may send, and what becomes of it. A method not named here is refused
// (-32601) — a method added to MCP later reaches no server until someone
// decides how the gateway treats it. Requests an upstream sends the
// client (sampling, elicitation, roots, ping, tasks) are relayed to the
// client and their answers back (proxy.go): the client is not governed
// there, it is asked.

// A method is how the gateway treats one request method a client sends.
type method struct {
	// serve handles the request. inline is true when the HTTP front
	// handed the request over on its own goroutine and waits for it.
	serve func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest, inline bool)
	// beforeInit: the method may come before initialize.
	beforeInit bool
	// governed: the request is a governed call (a tool call, a task's
	// result), which stays spent once sent: a cancel from the client
	// tells the server but still waits a while for its answer, whose
	// tokens count.
	governed bool
}

// async runs a handler off the caller's goroutine.
func async(f func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest)) func(*router, context.Context, *jsonrpc.Request, *clientRequest, bool) {
	return func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest, _ bool) {
		r.async(func() { f(r, ctx, req, cr) })
	}
}

// direct runs a handler on the caller's goroutine: one that only sends.
func direct(f func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest)) func(*router, context.Context, *jsonrpc.Request, *clientRequest, bool) {
	return func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest, _ bool) {
		f(r, ctx, req, cr)
	}
}

// list is a handler of one of MCP's lists.
func list(kind listKind) func(*router, context.Context, *jsonrpc.Request, *clientRequest, bool) {
	return func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest, _ bool) {
		r.list(ctx, req, cr, kind)
	}
}

// clientMethods are the requests a client may send.
var clientMethods = map[string]method{
	// The session's lifecycle: the gateway's own (initialize.go).
	"initialize":      {serve: async((*router).initialize), beforeInit: true},
	"server/discover": {serve: async((*router).discover), beforeInit: true},
	"ping":            {serve: (*router).ping, beforeInit: true},

	// Governed: trust, budget, audit (govern.go).
	"tools/call": {serve: (*router).serveToolCall, governed: true},
	// Filtered to the tools the agent may call (list.go).
	"tools/list": {serve: list(listTools)},

	// Tasks: only the session's own, and a result delivered once and
	// counted (tasks.go).
	"tasks/get":    {serve: async((*router).taskRequest)},
	"tasks/cancel": {serve: async((*router).taskRequest)},
	"tasks/result": {serve: async((*router).taskResult), governed: true},
	"tasks/list":   {serve: list(listTasks)},

	// Relayed to the upstream they are for (list.go, route.go).
	"prompts/list":             {serve: list(listPrompts)},
	"prompts/get":              {serve: direct((*router).routeByName)},
	"resources/list":           {serve: list(listResources)},
	"resources/templates/list": {serve: list(listTemplates)},
	"resources/read":           {serve: async((*router).routeByURI)},
	"resources/subscribe":      {serve: async((*router).routeByURI)},
	"resources/unsubscribe":    {serve: async((*router).routeByURI)},
	"completion/complete":      {serve: async((*router).complete)},
	"logging/setLevel": {serve: async(func(r *router, ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
		r.broadcast(ctx, req, cr, "logging")
	})},
}

// clientNotifications are the notifications the gateway acts on itself;
// any other "notifications/…" method is relayed to every upstream, and a
// notification of any other method is refused: a request the client sent
// without an id, such as a tools/call, would run ungoverned.
var clientNotifications = map[string]func(r *router, ctx context.Context, req *jsonrpc.Request){
	"notifications/cancelled": (*router).clientCancelled,
}

// isNotification reports whether a method may be sent as a notification.
func isNotification(method string) bool {
	return strings.HasPrefix(method, "notifications/")
}

// allowedBeforeInitialize reports whether a request may come before the
// session is initialized: the handshake itself, ping, and requests of the
// sessionless protocol (2026-07-28), which carry their protocol version
// in _meta instead.
func allowedBeforeInitialize(req *jsonrpc.Request, m method) bool {
	if m.beforeInit {
		return true
	}
	_, ok := object(object(req.Params)["_meta"])[mcp.MetaKeyProtocolVersion]
	return ok
}

// ping answers for the gateway in front of several upstreams, and is
// relayed to the one otherwise.
func (r *router) ping(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, _ bool) {
	if r.multi {
		r.reply(ctx, cr, req.ID, &jsonrpc.Response{Result: json.RawMessage("{}")})
		return
	}
	r.forward(ctx, req, cr, r.ups[0], req.Params, nil)
}

// serveToolCall governs a tools/call: on the caller's goroutine when the
// HTTP front waits for it, so its answer needs no hand-off.
func (r *router) serveToolCall(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, inline bool) {
	if !inline {
		r.async(func() { r.callTool(ctx, req, cr) })
		return
	}
	if r.begin() {
		defer r.calls.Done()
		r.callTool(ctx, req, cr)
	}
}
