package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// An Upstream is one MCP server behind the gateway.
type Upstream struct {
	// Name identifies the server in errors and logs. With several
	// upstreams it also prefixes the server's tool and prompt names:
	// "<name>__<tool>".
	Name string
	// Connect opens a new connection to the server. It is called again
	// when a connection is lost, so it must start afresh each time (a new
	// process for a stdio server).
	Connect func(context.Context) (mcp.Connection, error)
	// Timeout bounds how long a request waits for the server's answer;
	// progress notifications for a call restart the wait. 0 means
	// DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout is how long a request waits for an upstream's answer
// unless Upstream.Timeout says otherwise.
const DefaultTimeout = 60 * time.Second

// retryAfter is how soon a lost upstream may be reconnected.
const retryAfter = time.Second

// Errors of requests an upstream did not answer.
var (
	errUpstreamGone    = errors.New("closed the connection before answering")
	errUpstreamTimeout = errors.New("did not answer in time")
	errSessionEnded    = errors.New("the session ended")
)

// cancelGrace is how long a governed call the client cancelled still
// waits for the server's answer, whose tokens then count: the server ran
// it, and may answer anyway. Never longer than the upstream's timeout.
const cancelGrace = 5 * time.Second

// An unsentError is the failure of a request that never reached its
// server: no connection, or none that took the request. Only such a call
// gives its budget slot back; any other failure comes after the server
// may have acted on it.
type unsentError struct{ err error }

func (e *unsentError) Error() string { return e.err.Error() }
func (e *unsentError) Unwrap() error { return e.err }

// unsent marks err as the failure of a request that was never sent.
func unsent(err error) error {
	if err == nil {
		return nil
	}
	return &unsentError{err}
}

// wasSent reports whether a request that failed with err may have reached
// its server.
func wasSent(err error) bool {
	_, never := errors.AsType[*unsentError](err)
	return !never
}

// An upstreamError says which upstream failed a request, and how.
type upstreamError struct {
	name string
	err  error
}

func (e *upstreamError) Error() string {
	return fmt.Sprintf("the MCP server %q %v", e.name, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// replyFunc receives an upstream's answer to a request, or the error that
// means no answer will come.
type replyFunc func(*jsonrpc.Response, error)

// upstreamConn is a session's connection to one upstream, reconnected on
// demand. Requests to it carry the gateway's own ids, so that answers can
// be matched whoever asked: the client, or the gateway itself.
type upstreamConn struct {
	Upstream
	r        *router
	log      *slog.Logger
	observed atomic.Int32 // the state the Observer was last told of (observer.go)

	mu          sync.Mutex
	conn        mcp.Connection // nil while not connected
	gen         int            // counts connections, so stale readers can tell
	connecting  chan struct{}  // closed when a connection attempt in progress ends
	lastAttempt time.Time
	lastErr     error
	initialized bool // this connection was initialized for the client
	// inherited: the client initialized the session with another
	// replica, and knows this upstream's lists from there, so its first
	// connection here is no restart to tell it of.
	inherited bool
	caps      map[string]json.RawMessage
	nextID    int64
	pending   map[int64]*pendingRequest

	tools offeredTools // what it listed: the names a tools/call may name
}

type pendingRequest struct {
	reply replyFunc // for a request sent with send
	abort func()    // for one carried by exchange: stops its round trip
	err   error     // why it was taken from the table, for exchange
	timer *time.Timer
	token string // the request's progress token, JSON-encoded; "" if none
	gen   int
	// afterCancel: the client cancelled this governed call, which only
	// waits out cancelGrace for a late answer now.
	afterCancel bool
	deadline    time.Time // when the timer fires, unless reset
	// writing: the request is being written (sendOn). One that times out
	// still writing found a server that stopped reading: its connection
	// is dropped, which ends the write. Atomic, so that a request's
	// writer takes no lock to say it is done.
	writing atomic.Bool
}

// A roundTripper is a connection that can carry one request and its
// answer on the caller's goroutine, as an HTTP POST does; anything else
// the server sends meanwhile still comes through Read. It saves the
// hand-offs between goroutines that a reply through Read costs.
type roundTripper interface {
	roundTrip(ctx context.Context, req *jsonrpc.Request) (*jsonrpc.Response, error)
}

// errCancelled is the failure of a request the client cancelled.
var errCancelled = errors.New("cancelled by the client")

func (u *upstreamConn) timeout() time.Duration {
	if u.Timeout > 0 {
		return u.Timeout
	}
	return DefaultTimeout
}

// connected returns the live connection, connecting if there is none and
// the last attempt is not too recent. A new connection is initialized with
// the client's own initialize parameters, if it has sent them, so the
// server sees the client it would have seen without the gateway.
func (u *upstreamConn) connected(ctx context.Context) (mcp.Connection, int, error) {
	for {
		u.mu.Lock()
		if ch := u.connecting; ch != nil {
			// Another request is connecting: its connection, once
			// initialized, is this one's too.
			u.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
		if u.conn != nil {
			defer u.mu.Unlock()
			return u.conn, u.gen, nil
		}
		if !u.lastAttempt.IsZero() && time.Since(u.lastAttempt) < retryAfter {
			defer u.mu.Unlock()
			if u.lastErr == nil {
				return nil, 0, &upstreamError{u.Name, errors.New("is unavailable")}
			}
			return nil, 0, &upstreamError{u.Name, fmt.Errorf("is unavailable: %v", u.lastErr)}
		}
		u.lastAttempt = time.Now()
		ch := make(chan struct{})
		u.connecting = ch
		u.mu.Unlock()
		conn, gen, err := u.connect(ctx)
		u.mu.Lock()
		u.connecting = nil
		u.mu.Unlock()
		close(ch)
		return conn, gen, err
	}
}

// connect opens a new connection, initialized as the client initialized
// the session, if it has.
func (u *upstreamConn) connect(ctx context.Context) (mcp.Connection, int, error) {
	conn, err := u.Connect(context.WithoutCancel(ctx))
	if err != nil {
		u.mu.Lock()
		u.lastErr = fmt.Errorf("it could not be reached (%w)", err)
		u.mu.Unlock()
		u.log.Warn("agentsec: connecting to upstream", "upstream", u.Name, "err", err)
		u.observeUpstream(false)
		return nil, 0, &upstreamError{u.Name, fmt.Errorf("is unavailable: it could not be reached (%v)", err)}
	}
	u.mu.Lock()
	u.conn, u.initialized, u.lastErr = conn, false, nil
	u.gen++
	gen := u.gen
	u.mu.Unlock()
	u.tools.changed() // a new connection may list other tools
	go u.read(conn, gen)

	if params := u.r.initParams(); params != nil {
		if err := u.replayInitialize(ctx, conn, gen, params); err != nil {
			u.lost(conn, gen, err)
			return nil, 0, &upstreamError{u.Name, fmt.Errorf("failed to initialize: %v", err)}
		}
		u.mu.Lock()
		restarted := !u.inherited
		u.inherited = false
		u.mu.Unlock()
		if restarted {
			u.r.upstreamRestarted(u)
		}
	}
	return conn, gen, nil
}

// replayInitialize initializes a reconnected server as the client
// initialized its first connection.
func (u *upstreamConn) replayInitialize(ctx context.Context, conn mcp.Connection, gen int, params json.RawMessage) error {
	type answer struct {
		resp *jsonrpc.Response
		err  error
	}
	ch := make(chan answer, 1)
	if _, err := u.sendOn(ctx, conn, gen, "initialize", params, "", func(resp *jsonrpc.Response, err error) {
		ch <- answer{resp, err}
	}, nil); err != nil {
		return err
	}
	var a answer
	select {
	case a = <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	if a.err != nil {
		return a.err
	}
	if a.resp.Error != nil {
		return a.resp.Error
	}
	if err := u.setInitialized(a.resp.Result); err != nil {
		return err
	}
	return conn.Write(ctx, &jsonrpc.Request{Method: "notifications/initialized"})
}

// setInitialized records what an initialize result says the server
// serves.
func (u *upstreamConn) setInitialized(result json.RawMessage) error {
	if err := u.setCapabilities(result); err != nil {
		return err
	}
	u.mu.Lock()
	u.initialized = true
	u.mu.Unlock()
	u.observeUpstream(true)
	return nil
}

// setCapabilities records the capabilities an initialize or
// server/discover result declares.
func (u *upstreamConn) setCapabilities(result json.RawMessage) error {
	var r struct {
		Capabilities map[string]json.RawMessage `json:"capabilities"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return fmt.Errorf("initialize result is malformed: %v", err)
	}
	u.mu.Lock()
	u.caps = r.Capabilities
	if u.caps == nil {
		u.caps = map[string]json.RawMessage{}
	}
	u.mu.Unlock()
	return nil
}

// serves reports whether the server declared the capability (tools,
// resources, prompts, logging, completions). A server that has not said,
// as under the sessionless protocol before server/discover, is assumed to.
func (u *upstreamConn) serves(capability string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.caps == nil {
		return true
	}
	_, ok := u.caps[capability]
	return ok
}

// send forwards a request to the server under a fresh id and calls reply
// with its answer, or with an error once the server is gone or the
// request timed out. It returns the id used, for cancellation.
func (u *upstreamConn) send(ctx context.Context, method string, params json.RawMessage, token string, reply replyFunc) (int64, error) {
	return u.sendIf(ctx, method, params, token, reply, nil)
}

// sendIf is send, asking before first whether the request should still go:
// before, if not nil, is told its id just before it is written, and if it
// returns false — the client cancelled it meanwhile — the request is not
// sent, and sendIf returns an unsentError. A request is never written
// and then found to be unwanted: once written, it may run.
func (u *upstreamConn) sendIf(ctx context.Context, method string, params json.RawMessage, token string, reply replyFunc, before func(int64) bool) (int64, error) {
	conn, gen, err := u.connected(ctx)
	if err != nil {
		return 0, unsent(err)
	}
	return u.sendOn(ctx, conn, gen, method, params, token, reply, before)
}

// sendOn is sendIf on a given connection.
func (u *upstreamConn) sendOn(ctx context.Context, conn mcp.Connection, gen int, method string, params json.RawMessage, token string, reply replyFunc, before func(int64) bool) (int64, error) {
	p := &pendingRequest{reply: reply, token: token, gen: gen}
	p.writing.Store(true)
	id, err := u.register(p, before)
	if err != nil {
		return 0, err
	}
	err = conn.Write(ctx, &jsonrpc.Request{ID: intID(id), Method: method, Params: params})
	p.writing.Store(false)
	if err != nil {
		if u.take(id, nil) != nil {
			return 0, unsent(&upstreamError{u.Name, fmt.Errorf("could not be reached: %v", err)})
		}
	}
	return id, nil
}

// register gives a request its id and its place in the table, timed.
// before, if not nil, is told the id, and if it returns false — the client
// cancelled the request meanwhile — the request leaves the table, and
// register returns an unsentError: it must not be sent.
func (u *upstreamConn) register(p *pendingRequest, before func(int64) bool) (int64, error) {
	id, err := u.enter(p)
	if err == nil && before != nil && !before(id) {
		u.take(id, errCancelled)
		return 0, unsent(errCancelled)
	}
	return id, err
}

// enter puts a request in the table under a fresh id, with its timer.
func (u *upstreamConn) enter(p *pendingRequest) (int64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.gen != p.gen || u.conn == nil {
		return 0, unsent(&upstreamError{u.Name, errUpstreamGone})
	}
	u.nextID++
	id := u.nextID
	p.deadline = time.Now().Add(u.timeout())
	p.timer = time.AfterFunc(u.timeout(), func() { u.expire(id) })
	if u.pending == nil {
		u.pending = map[int64]*pendingRequest{}
	}
	u.pending[id] = p
	return id, nil
}

// exchange sends a request and waits for its answer, on the caller's
// goroutine when the connection is a roundTripper. sent, if not nil, is
// told the request's id before it goes, so that the client can cancel
// it; if it returns false the client already has, and the request is not
// sent.
//
// A failure before the request was sent is an unsentError (wasSent).
func (u *upstreamConn) exchange(ctx context.Context, method string, params json.RawMessage, token string, sent func(int64) bool) (*jsonrpc.Response, error) {
	conn, gen, err := u.connected(ctx)
	if err != nil {
		return nil, unsent(err)
	}
	rt, direct := conn.(roundTripper)
	if !direct {
		return u.callAndWait(ctx, method, params, token, sent)
	}
	rctx, abort := context.WithCancel(ctx)
	defer abort()
	p := &pendingRequest{abort: abort, token: token, gen: gen}
	id, err := u.register(p, sent)
	if err != nil {
		return nil, err
	}
	resp, rerr := rt.roundTrip(rctx, &jsonrpc.Request{ID: intID(id), Method: method, Params: params})
	if u.take(id, nil) == nil {
		// Timed out, cancelled or lost meanwhile: that is the answer.
		u.mu.Lock()
		defer u.mu.Unlock()
		return nil, p.err
	}
	if rerr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		u.observeUpstream(false)
		if !wasSent(rerr) {
			return nil, unsent(&upstreamError{u.Name, rerr})
		}
		return nil, &upstreamError{u.Name, rerr}
	}
	return resp, nil
}

// callAndWait is exchange through send, for connections whose answers
// come through Read.
func (u *upstreamConn) callAndWait(ctx context.Context, method string, params json.RawMessage, token string, sent func(int64) bool) (*jsonrpc.Response, error) {
	type answer struct {
		resp *jsonrpc.Response
		err  error
	}
	ch := make(chan answer, 1)
	id, err := u.sendIf(ctx, method, params, token, func(resp *jsonrpc.Response, err error) { ch <- answer{resp, err} }, sent)
	if err != nil {
		return nil, err
	}
	select {
	case a := <-ch:
		return a.resp, a.err
	case <-ctx.Done():
		u.cancel(ctx, id, "the client went away")
		return nil, ctx.Err()
	}
}

// call is send, waiting for the answer.
func (u *upstreamConn) call(ctx context.Context, method string, params json.RawMessage, token string) (*jsonrpc.Response, error) {
	return u.callAndWait(ctx, method, params, token, nil)
}

// notify sends a notification, or a response to one of the server's own
// requests, on the current connection. An upstream not connected gets
// nothing: a reconnected one is told afresh.
//
// A server that reads nothing for the upstream's timeout while a message
// waits to be written has its connection dropped, which ends the write:
// a notification is written on the client's read loop, which it would
// hold as long as the server read nothing.
func (u *upstreamConn) notify(ctx context.Context, msg jsonrpc.Message) error {
	u.mu.Lock()
	conn, gen := u.conn, u.gen
	u.mu.Unlock()
	if conn == nil {
		return nil
	}
	stuck := time.AfterFunc(u.timeout(), func() {
		u.lost(conn, gen, fmt.Errorf("the server read no message for %v", u.timeout()))
	})
	defer stuck.Stop()
	return conn.Write(ctx, msg)
}

// cancel abandons a request: its answer will be dropped, and the server
// is asked to stop.
func (u *upstreamConn) cancel(ctx context.Context, id int64, reason string) {
	p := u.take(id, errCancelled)
	if p == nil {
		return
	}
	if p.reply != nil {
		defer p.reply(nil, errCancelled) // whoever waits for it stops waiting
	}
	params, _ := json.Marshal(map[string]any{"requestId": id, "reason": reason})
	_ = u.notify(context.WithoutCancel(ctx), &jsonrpc.Request{Method: "notifications/cancelled", Params: params})
	p.stop()
}

// cancelledByClient tells the server the client cancelled a governed call
// it has, and leaves the call waiting at most cancelGrace for an answer
// the server may still give: the call ran, and a result's tokens count
// even if the client will never see it.
func (u *upstreamConn) cancelledByClient(ctx context.Context, id int64, reason string) {
	u.mu.Lock()
	p := u.pending[id]
	if p == nil || p.afterCancel {
		u.mu.Unlock()
		return
	}
	p.afterCancel = true
	// Never past the request's own deadline.
	wait := max(0, min(cancelGrace, time.Until(p.deadline)))
	p.deadline = time.Now().Add(wait)
	p.timer.Reset(wait)
	u.mu.Unlock()
	params, _ := json.Marshal(map[string]any{"requestId": id, "reason": reason})
	_ = u.notify(context.WithoutCancel(ctx), &jsonrpc.Request{Method: "notifications/cancelled", Params: params})
}

// take removes a pending request, stopping its timer. err, if not nil,
// is why: the answer exchange gives once its round trip, which the caller
// then stops (p.stop), returns.
func (u *upstreamConn) take(id int64, err error) *pendingRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := u.pending[id]
	if p != nil {
		delete(u.pending, id)
		p.timer.Stop()
		p.err = err
	}
	return p
}

// stop ends the round trip of a request carried by exchange, if it is
// one. The server is told first (notifications/cancelled): a server that
// saw the connection drop first might forget the request, and its
// handler would run on.
func (p *pendingRequest) stop() {
	if p.abort != nil {
		p.abort()
	}
}

func (u *upstreamConn) expire(id int64) {
	u.mu.Lock()
	p := u.pending[id]
	afterCancel := p != nil && p.afterCancel
	stuck := p != nil && p.writing.Load() && u.gen == p.gen
	conn := u.conn
	u.mu.Unlock()
	if p == nil {
		return
	}
	err := &upstreamError{u.Name, fmt.Errorf("%w (%v)", errUpstreamTimeout, u.timeout())}
	if afterCancel { // told of the cancel already
		err = &upstreamError{u.Name, errors.New("did not answer after the cancel")}
	}
	if stuck {
		// The server has not read the request in all this time: it
		// reads nothing, and a cancel would wait behind the request.
		// Dropping the connection ends the write; the next request
		// starts the server again.
		if p := u.take(id, err); p != nil && p.reply != nil {
			p.reply(nil, err)
		}
		u.lost(conn, p.gen, fmt.Errorf("the server read no request for %v", u.timeout()))
		return
	}
	if p := u.take(id, err); p != nil {
		if !afterCancel {
			params, _ := json.Marshal(map[string]any{"requestId": id, "reason": "timed out"})
			_ = u.notify(context.Background(), &jsonrpc.Request{Method: "notifications/cancelled", Params: params})
		}
		p.stop()
		if p.reply != nil {
			p.reply(nil, err)
		}
	}
}

// progressed restarts the wait of the requests with this progress token.
func (u *upstreamConn) progressed(token string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.pending {
		if p.token == token && !p.afterCancel {
			p.deadline = time.Now().Add(u.timeout())
			p.timer.Reset(u.timeout())
		}
	}
}

// read delivers the server's messages until its connection ends.
func (u *upstreamConn) read(conn mcp.Connection, gen int) {
	ctx := context.Background()
	for {
		msg, err := conn.Read(ctx)
		if err != nil {
			u.lost(conn, gen, err)
			return
		}
		switch m := msg.(type) {
		case *jsonrpc.Response:
			id, ok := m.ID.Raw().(int64)
			if !ok {
				continue
			}
			if p := u.take(id, nil); p != nil && p.reply != nil {
				p.reply(m, nil)
			}
		case *jsonrpc.Request:
			u.r.fromUpstream(u, gen, m)
		}
	}
}

// lost forgets a connection that ended and fails the requests waiting on
// it.
func (u *upstreamConn) lost(conn mcp.Connection, gen int, err error) {
	u.mu.Lock()
	if u.gen != gen || u.conn != conn {
		// Lost already: a connection closed by the gateway (close) also
		// ends its reader, which must not close it a second time — for
		// an HTTP upstream, a second DELETE.
		u.mu.Unlock()
		return
	}
	if !errors.Is(err, errSessionEnded) {
		u.log.Warn("agentsec: upstream connection ended", "upstream", u.Name, "err", err)
		defer u.observeUpstream(false)
	}
	u.conn, u.initialized, u.lastErr = nil, false, fmt.Errorf("its connection ended (%w)", err)
	gone := &upstreamError{u.Name, errUpstreamGone}
	var failed []*pendingRequest
	for id, p := range u.pending {
		if p.gen == gen {
			delete(u.pending, id)
			p.timer.Stop()
			p.err = gone
			p.stop()
			failed = append(failed, p)
		}
	}
	u.mu.Unlock()
	conn.Close()
	for _, p := range failed {
		if p.reply != nil {
			p.reply(nil, gone)
		}
	}
	u.r.upstreamLost(u, gen)
}

// close ends the connection.
func (u *upstreamConn) close() {
	u.mu.Lock()
	conn, gen := u.conn, u.gen
	u.mu.Unlock()
	if conn != nil {
		u.lost(conn, gen, errSessionEnded)
	}
}

// intID is a JSON-RPC id of the gateway's own: an integer.
func intID(n int64) jsonrpc.ID {
	id, _ := jsonrpc.MakeID(float64(n))
	return id
}
