// Package mcpgate is agentsec's MCP governance gateway: it sits between an
// MCP client and one or more MCP servers and applies the trust gate, the
// budget and the audit log to every tool call, without either side
// changing.
//
// The gateway works on JSON-RPC messages. In front of one server, every
// message is relayed unchanged in both directions except two: a
// tools/list result is filtered to the tools the agent may call, and a
// tools/call request goes through agentsec.Stack.Guard, so a denied call
// never reaches the server. In front of several, the gateway answers the
// client as one server: it initializes each upstream with the client's
// parameters and merges their answers, offers each upstream's tools and
// prompts as "<upstream>__<name>", pages through each upstream's lists in
// turn, and routes every request to the upstream it is for.
//
// Requests reach an upstream under the gateway's own ids, so answers are
// matched whoever asked; requests an upstream sends the client (sampling,
// elicitation, roots, ping) are relayed the same way in the other
// direction. A lost upstream is reconnected, and re-initialized as the
// client initialized it, when a request next needs it.
package mcpgate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
)

// A Proxy serves one client's MCP session in front of its upstream
// servers and governs its tool calls.
type Proxy struct {
	// Stack decides, counts and records every tool call.
	Stack *agentsec.Stack
	// Agent is the client's agent id, from the gateway's configuration or
	// the client's authentication — never from the client's messages.
	Agent string
	// Session is the budget session the calls are charged to. Empty means
	// a new random one for this connection.
	Session string
	// Upstreams are the servers behind the gateway; at least one, with
	// distinct names.
	Upstreams []Upstream
	// Tokens counts what a tool result costs; nil means a
	// TiktokenCounter.
	Tokens TokenCounter
	// Log receives the proxy's own events; nil means slog.Default().
	Log *slog.Logger
	// AllowUnlistedTools lets a tools/call name a tool its upstream never
	// listed in the session. By default such a call is refused and
	// recorded: a server that reads names loosely could run a listed tool
	// under a name the trust gate judged as another (offered.go).
	AllowUnlistedTools bool
	// Observer, if set, is told of the governed calls sent upstream and
	// of the upstreams' connections.
	Observer Observer
	// Attrs go into the audit record of each governed call, beside the
	// gateway's own. The Gateway gives each HTTP request's calls its
	// caller's instead: an OAuth token's issuer, subject and id.
	Attrs map[string]string

	// onInitialized, if set, must succeed before the client learns its
	// session is initialized: a Gateway's replicas record the session.
	onInitialized func(context.Context, json.RawMessage) error
	// onListed, if set, is told of each tool an upstream lists, by the
	// name the trust gate judges.
	onListed func(upstream, tool string)
}

// JSON-RPC error codes of the gateway's own replies.
const (
	codeInvalidRequest   = jsonrpc.CodeInvalidRequest
	codeMethodNotFound   = jsonrpc.CodeMethodNotFound
	codeInvalidParams    = jsonrpc.CodeInvalidParams
	codeInternal         = jsonrpc.CodeInternalError
	codeResourceNotFound = jsonrpc.CodeInvalidParams // an unknown resource, as MCP says since SEP-2164
)

// Serve relays the session on down, the client's connection, until the
// client closes it or ctx is done. It returns nil when the client closed
// normally.
//
// A session Serve named itself (Session empty) is its own: once it ends,
// its budget is forgotten.
func (p *Proxy) Serve(ctx context.Context, down mcp.Connection) error {
	r, err := p.router(ctx, down)
	if err != nil {
		return err
	}
	err = r.serve()
	if p.Session == "" {
		if ferr := p.Stack.Budget.Forget(context.WithoutCancel(ctx), r.session); ferr != nil {
			r.log.Warn("agentsec: forgetting an ended session's budget", "session", r.session, "err", ferr)
		}
	}
	return err
}

// A pushConn hands the client's messages to the proxy itself, on the
// goroutine that received each, rather than through Read: the HTTP
// front, where each message comes on a request of its own. A pushed
// tools/call is governed on that goroutine, so its answer needs no
// hand-off to reach the response. Read on a pushConn only waits for it
// to close.
//
// Each message comes with the attributes of the caller that sent it
// (nil for none): over HTTP every request carries its own token, and a
// session outlives the token that opened it.
type pushConn interface {
	setReceiver(func(msg jsonrpc.Message, attrs map[string]string) *jsonrpc.Error)
}

// A requestDropper is a connection that holds something open for each
// request until its answer — the HTTP front, a response — and must be
// told of a request that will get none.
type requestDropper interface {
	dropRequest(id jsonrpc.ID)
}

// router checks the proxy's settings and makes its session's state.
func (p *Proxy) router(ctx context.Context, down mcp.Connection) (*router, error) {
	if p.Stack == nil || p.Agent == "" || len(p.Upstreams) == 0 {
		return nil, errors.New("mcpgate: a proxy needs a Stack, an Agent and an upstream")
	}
	names := map[string]bool{}
	for _, u := range p.Upstreams {
		if u.Name == "" || u.Connect == nil || names[u.Name] {
			return nil, errors.New("mcpgate: every upstream needs a distinct name and a Connect function")
		}
		names[u.Name] = true
	}
	session := p.Session
	if session == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		session = "mcp-" + hex.EncodeToString(b[:])
	}
	r := &router{p: p, session: session, down: down, tokens: p.Tokens, log: p.Log,
		inflight: map[jsonrpc.ID]*clientRequest{}, outbound: map[int64]outboundRequest{}}
	r.ctx, r.cancel = context.WithCancel(ctx)
	if r.tokens == nil {
		r.tokens = &TiktokenCounter{}
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	for _, u := range p.Upstreams {
		r.ups = append(r.ups, &upstreamConn{Upstream: u, r: r, log: r.log})
	}
	r.multi = len(r.ups) > 1
	if pc, ok := down.(pushConn); ok {
		pc.setReceiver(func(msg jsonrpc.Message, attrs map[string]string) *jsonrpc.Error {
			ctx := r.ctx
			if attrs != nil {
				ctx = context.WithValue(ctx, callerAttrsKey{}, attrs)
			}
			return r.dispatch(ctx, msg, true)
		})
	}
	return r, nil
}

// serve runs the session until the client's connection ends.
func (r *router) serve() error {
	ctx := r.ctx
	defer r.cancel()
	// Connect at once, so a server that can't start says so early; a
	// failure here is retried when a request needs the server.
	var wg sync.WaitGroup
	for _, u := range r.ups {
		wg.Go(func() { u.connected(ctx) })
	}
	wg.Wait()
	err := r.fromClient(ctx)
	r.cancel()
	r.down.Close()
	for _, u := range r.ups {
		wg.Go(u.close) // at once: closing may wait for a process to exit
	}
	wg.Wait()
	r.mu.Lock()
	r.ending = true
	r.mu.Unlock()
	r.calls.Wait()
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// callerAttrsKey keys the attributes of the caller whose request carried
// a message, in the context it is dispatched with (see pushConn).
type callerAttrsKey struct{}

// attrs are the attributes a governed call of ctx is recorded with: its
// caller's, or else the Proxy's.
func (r *router) attrs(ctx context.Context) map[string]string {
	if attrs, ok := ctx.Value(callerAttrsKey{}).(map[string]string); ok {
		return attrs
	}
	return r.p.Attrs
}

// router is the state of one proxied session.
type router struct {
	ctx     context.Context // the session's; cancelled when it ends
	cancel  context.CancelFunc
	p       *Proxy
	session string
	tokens  TokenCounter
	log     *slog.Logger
	down    mcp.Connection
	ups     []*upstreamConn
	multi   bool // several upstreams: names prefixed, answers merged

	mu       sync.Mutex
	init     json.RawMessage // the client's initialize params, once answered
	inflight map[jsonrpc.ID]*clientRequest
	// unanswered counts the requests tracked whose answers are not yet
	// written: an id is free for reuse once its answer is on its way,
	// but the request counts against maxInflight until the client has
	// taken its answer, so one that stops reading can't pile up answers.
	unanswered int
	outbound   map[int64]outboundRequest // the upstreams' requests to the client, by the gateway's id
	nextOut    int64
	owners     resourceOwners
	tasks      map[string]*task // the tasks the session created, by id

	calls  sync.WaitGroup // requests handled off the read loop
	ending bool           // the session is ending: no more of them
}

// A clientRequest is a request of the client's in progress.
type clientRequest struct {
	cancelled chan struct{}
	up        *upstreamConn // where it went, once sent
	upID      int64
	governed  bool // spent once sent: a cancel doesn't stop the wait (methods.go)
	answered  bool // its answer is written (or dropped): router.unanswered counts it no more
}

// An outboundRequest is an upstream's request the gateway relayed to the
// client.
type outboundRequest struct {
	up  *upstreamConn
	gen int
	id  jsonrpc.ID // the upstream's own id
}

func (r *router) initParams() json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.init
}

func (r *router) fromClient(ctx context.Context) error {
	for {
		msg, err := r.down.Read(ctx)
		if err != nil {
			return err
		}
		if refused := r.dispatch(ctx, msg, false); refused != nil {
			_ = r.down.Write(ctx, &jsonrpc.Response{Error: refused}) // id null: a notification has none
		}
	}
}

// dispatch handles one message from the client. A pushed tools/call
// (inline) is governed before dispatch returns. A notification the
// gateway refuses returns the error to answer it with, which the caller
// sends as its transport can: over stdio with a null id, over HTTP as
// the POST's answer.
func (r *router) dispatch(ctx context.Context, msg jsonrpc.Message, inline bool) *jsonrpc.Error {
	switch m := msg.(type) {
	case *jsonrpc.Response:
		r.clientAnswered(ctx, m)
	case *jsonrpc.Request:
		if m.IsCall() {
			r.clientRequest(ctx, m, inline)
		} else {
			return r.clientNotification(ctx, m)
		}
	}
	return nil
}

// clientRequest dispatches one of the client's requests by the method
// table (methods.go).
func (r *router) clientRequest(ctx context.Context, req *jsonrpc.Request, inline bool) {
	m, known := clientMethods[req.Method]
	if !known {
		r.writeError(ctx, req.ID, codeMethodNotFound, "agentsec: the gateway does not relay "+req.Method+
			": it relays only the MCP methods it can govern")
		return
	}
	if !r.initParamsSet() && !allowedBeforeInitialize(req, m) {
		r.writeError(ctx, req.ID, codeInvalidRequest, "agentsec: "+req.Method+" before initialize: initialize the session first")
		return
	}
	cr, refusal := r.track(req.ID)
	if refusal != "" {
		r.writeError(ctx, req.ID, codeInvalidRequest, refusal)
		return
	}
	cr.governed = m.governed
	m.serve(r, ctx, req, cr, inline)
}

func (r *router) async(f func()) {
	if r.begin() {
		go func() {
			defer r.calls.Done()
			f()
		}()
	}
}

// begin counts a request handled off the read loop, unless the session is
// ending.
func (r *router) begin() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending {
		return false
	}
	r.calls.Add(1)
	return true
}

// maxInflight bounds the requests of one session in progress at once.
const maxInflight = 1024

// track records a request of the client's as in progress, or says why it
// can't be: its id is in use, or the session has too many.
func (r *router) track(id jsonrpc.ID) (*clientRequest, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.inflight[id]; dup {
		return nil, "agentsec: a request with this id is already in progress"
	}
	if len(r.inflight) >= maxInflight || r.unanswered >= maxInflight {
		return nil, fmt.Sprintf("agentsec: the session has %d requests in progress, the most it may; wait for some to finish", maxInflight)
	}
	cr := &clientRequest{cancelled: make(chan struct{})}
	r.inflight[id] = cr
	r.unanswered++
	return cr, ""
}

// answered counts cr among the unanswered requests no more, once.
func (r *router) answered(cr *clientRequest) {
	r.mu.Lock()
	if !cr.answered {
		cr.answered = true
		r.unanswered--
	}
	r.mu.Unlock()
}

func (r *router) initParamsSet() bool { return r.initParams() != nil }

// untrack ends request cr of id, unless the id is another's by now: the
// client may reuse an id once its request was answered.
func (r *router) untrack(id jsonrpc.ID, cr *clientRequest) {
	r.mu.Lock()
	if r.inflight[id] == cr {
		delete(r.inflight, id)
	}
	r.mu.Unlock()
}

// sent records where a request went, so the client can cancel it. It
// reports false if the client cancelled it meanwhile; the caller then
// cancels it upstream.
func (r *router) sent(cr *clientRequest, u *upstreamConn, id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	cr.up, cr.upID = u, id
	select {
	case <-cr.cancelled:
		return false
	default:
		return true
	}
}

func isCancelled(cr *clientRequest) bool {
	select {
	case <-cr.cancelled:
		return true
	default:
		return false
	}
}

// reply answers the client's request id and ends it. A cancelled request
// gets no answer, as the protocol asks.
func (r *router) reply(ctx context.Context, cr *clientRequest, id jsonrpc.ID, resp *jsonrpc.Response) {
	r.untrack(id, cr)
	if cr != nil {
		defer r.answered(cr)
	}
	if cr != nil && isCancelled(cr) {
		if d, ok := r.down.(requestDropper); ok {
			d.dropRequest(id)
		}
		return
	}
	out := &jsonrpc.Response{ID: id, Result: resp.Result, Error: resp.Error}
	_ = r.down.Write(ctx, out) // a client that is gone needs no answer
}

// replyError answers a tracked request with an error and ends it.
func (r *router) replyError(ctx context.Context, cr *clientRequest, id jsonrpc.ID, code int64, msg string) {
	r.reply(ctx, cr, id, &jsonrpc.Response{Error: &jsonrpc.Error{Code: code, Message: msg}})
}

// writeError answers a request that was never tracked: the id may belong
// to another request in progress, which must go on.
func (r *router) writeError(ctx context.Context, id jsonrpc.ID, code int64, msg string) {
	_ = r.down.Write(ctx, &jsonrpc.Response{ID: id, Error: &jsonrpc.Error{Code: code, Message: msg}})
}

// replyFailure answers a request that did not get an answer upstream.
func (r *router) replyFailure(ctx context.Context, cr *clientRequest, id jsonrpc.ID, err error) {
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		r.reply(ctx, cr, id, &jsonrpc.Response{Error: we})
		return
	}
	r.reply(ctx, cr, id, &jsonrpc.Response{Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}})
}

// forward sends a request to one upstream with the given params and
// relays its answer, changed by rewrite if that is not nil.
func (r *router) forward(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, u *upstreamConn, params json.RawMessage,
	rewrite func(*jsonrpc.Response) *jsonrpc.Response) {
	_, err := u.sendIf(ctx, req.Method, params, "", func(resp *jsonrpc.Response, err error) {
		if err != nil {
			r.replyFailure(ctx, cr, req.ID, err)
			return
		}
		if rewrite != nil {
			resp = rewrite(resp)
		}
		r.reply(ctx, cr, req.ID, resp)
	}, func(id int64) bool { return r.sent(cr, u, id) })
	if err != nil {
		r.replyFailure(ctx, cr, req.ID, err) // a cancelled request's is dropped
	}
}

// clientNotification handles a notification from the client: relayed
// to every upstream if it is one of MCP's ("notifications/…"), refused
// otherwise. A request sent without an id would reach the servers with
// no answer to wait for and nothing to govern it by; a tools/call sent so
// is recorded as refused.
func (r *router) clientNotification(ctx context.Context, req *jsonrpc.Request) *jsonrpc.Error {
	if !isNotification(req.Method) {
		msg := "agentsec: " + req.Method + " sent as a notification (without an id) is refused: only notifications/… methods may be; send it as a request, with an id"
		if req.Method == "tools/call" {
			call := agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: stringField(object(req.Params), "name"), Attrs: r.attrs(ctx)}
			if call.Tool == "" {
				call.Tool = "(none)"
			}
			_ = r.p.Stack.Refuse(ctx, call, "tools/call sent as a notification, without an id: refused")
		}
		// Debug, not Warn: a client could write the gateway's log full
		// with them. A refused tools/call is in the audit log.
		r.log.Debug("agentsec: refused a notification", "method", truncateMethod(req.Method), "session", r.session, "agent", r.p.Agent)
		return &jsonrpc.Error{Code: codeInvalidRequest, Message: msg}
	}
	if handle := clientNotifications[req.Method]; handle != nil {
		handle(r, ctx, req)
		return nil
	}
	// notifications/initialized completes each upstream's handshake,
	// which the gateway began with the client's own parameters.
	for _, u := range r.ups {
		_ = u.notify(ctx, req)
	}
	return nil
}

// truncateMethod bounds a client's method name for the gateway's log.
func truncateMethod(m string) string {
	if len(m) > 64 {
		return m[:64] + "…"
	}
	return m
}

// clientCancelled stops a request the client gave up on, and tells the
// upstream that has it.
func (r *router) clientCancelled(ctx context.Context, req *jsonrpc.Request) {
	params := object(req.Params)
	id, err := decodeID(params["requestId"])
	if err != nil || !id.IsValid() {
		return
	}
	r.mu.Lock()
	cr := r.inflight[id]
	var u *upstreamConn
	var upID int64
	if cr != nil && !isCancelled(cr) {
		close(cr.cancelled)
		u, upID = cr.up, cr.upID
	}
	r.mu.Unlock()
	if u == nil {
		return
	}
	reason := stringField(params, "reason")
	if reason == "" || len(reason) > 512 {
		reason = "cancelled by the client"
	}
	if cr.governed {
		// Sent is spent: the server is told, and its answer, if it
		// comes, is still counted (govern.go).
		u.cancelledByClient(ctx, upID, reason)
		return
	}
	u.cancel(ctx, upID, reason)
}

// clientAnswered relays the client's answer to an upstream's request.
func (r *router) clientAnswered(ctx context.Context, resp *jsonrpc.Response) {
	id, ok := resp.ID.Raw().(int64)
	if !ok {
		return
	}
	r.mu.Lock()
	out, ok := r.outbound[id]
	delete(r.outbound, id)
	r.mu.Unlock()
	if !ok {
		return
	}
	out.up.mu.Lock()
	current := out.up.gen == out.gen
	out.up.mu.Unlock()
	if current {
		_ = out.up.notify(ctx, &jsonrpc.Response{ID: out.id, Result: resp.Result, Error: resp.Error})
	}
}

// fromUpstream relays an upstream's request or notification to the
// client.
func (r *router) fromUpstream(u *upstreamConn, gen int, req *jsonrpc.Request) {
	ctx := context.Background()
	if req.IsCall() {
		r.mu.Lock()
		if len(r.outbound) >= maxInflight {
			r.mu.Unlock()
			_ = u.notify(ctx, &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInternal,
				Message: fmt.Sprintf("agentsec: %d requests to the client are waiting already", maxInflight)}})
			return
		}
		r.nextOut++
		id := r.nextOut
		r.outbound[id] = outboundRequest{up: u, gen: gen, id: req.ID}
		r.mu.Unlock()
		if err := r.down.Write(ctx, &jsonrpc.Request{ID: intID(id), Method: req.Method, Params: req.Params}); err != nil {
			r.mu.Lock()
			delete(r.outbound, id)
			r.mu.Unlock()
			_ = u.notify(ctx, &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInternal,
				Message: "agentsec: the client could not be reached: " + err.Error()}})
		}
		return
	}
	toolsChanged(u, req)
	switch req.Method {
	case "notifications/progress":
		if token := object(req.Params)["progressToken"]; len(token) > 0 {
			u.progressed(string(token))
		}
	case "notifications/cancelled":
		// The upstream gave up on one of its requests to the client: name
		// it by the id the client knows.
		if req = r.outboundCancelled(u, gen, req); req == nil {
			return
		}
	}
	// A message the client's side can't take now — over HTTP, a
	// notification while no stream is open — is lost, as it would be
	// without the gateway; it doesn't end the session.
	_ = r.down.Write(ctx, req)
}

func (r *router) outboundCancelled(u *upstreamConn, gen int, req *jsonrpc.Request) *jsonrpc.Request {
	var params map[string]json.RawMessage
	if json.Unmarshal(req.Params, &params) != nil {
		return nil
	}
	var raw any
	if json.Unmarshal(params["requestId"], &raw) != nil {
		return nil
	}
	upID, err := jsonrpc.MakeID(raw)
	if err != nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, out := range r.outbound {
		if out.up == u && out.gen == gen && out.id == upID {
			delete(r.outbound, id)
			params["requestId"], _ = json.Marshal(id)
			p, _ := json.Marshal(params)
			return &jsonrpc.Request{Method: req.Method, Params: p}
		}
	}
	return nil
}

// upstreamLost fails the requests the upstream had asked of the client:
// their answers have nowhere to go.
func (r *router) upstreamLost(u *upstreamConn, gen int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, out := range r.outbound {
		if out.up == u && out.gen == gen {
			delete(r.outbound, id)
		}
	}
}

// upstreamRestarted tells the client that a reconnected upstream's lists
// may have changed.
func (r *router) upstreamRestarted(u *upstreamConn) {
	for _, kind := range []string{"tools", "prompts", "resources"} {
		if u.serves(kind) {
			_ = r.down.Write(context.Background(), &jsonrpc.Request{Method: "notifications/" + kind + "/list_changed"})
		}
	}
}
