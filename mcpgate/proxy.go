// Package mcpgate is agentsec's MCP governance gateway: it sits between an
// MCP client and an MCP server and applies the trust gate, the budget and
// the audit log to every tool call, without either side changing.
//
// The gateway works on JSON-RPC messages, through the official SDK's
// transports (github.com/modelcontextprotocol/go-sdk). Every message is
// relayed unchanged in both directions, except two: a tools/list result is
// filtered to the tools the agent may call, and a tools/call request goes
// through agentsec.Stack.Guard, so a denied call never reaches the server.
// A notifications/cancelled for a governed call also stops the gateway
// waiting for it.
package mcpgate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
)

// A Proxy relays one client's MCP session to one server and governs its
// tool calls.
type Proxy struct {
	// Stack decides, counts and records every tool call.
	Stack *agentsec.Stack
	// Agent is the client's agent id, from the gateway's configuration or
	// the client's authentication — never from the client's messages.
	Agent string
	// Session is the budget session the calls are charged to. Empty means
	// a new random one for this connection.
	Session string
	// Tokens counts what a tool result costs; nil means a
	// TiktokenCounter.
	Tokens TokenCounter
}

// JSON-RPC error codes of the gateway's own replies.
const (
	codeInvalidParams = -32602
	codeInternal      = -32603
)

// errUpstreamGone is the failure of a call whose server connection closed
// before it answered.
var errUpstreamGone = errors.New("the MCP server closed the connection before answering")

// Serve relays messages between down, the client's connection, and up,
// the server's, until either closes or ctx is done. It returns nil when a
// side closed normally.
func (p *Proxy) Serve(ctx context.Context, down, up mcp.Connection) error {
	if p.Stack == nil || p.Agent == "" {
		return errors.New("mcpgate: a proxy needs a Stack and an Agent")
	}
	session := p.Session
	if session == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		session = "mcp-" + hex.EncodeToString(b[:])
	}
	tokens := p.Tokens
	if tokens == nil {
		tokens = &TiktokenCounter{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &relay{p: p, session: session, tokens: tokens, down: down, up: up,
		calls: map[jsonrpc.ID]*pendingCall{}, lists: map[jsonrpc.ID]bool{}, gone: make(chan struct{})}
	errc := make(chan error, 2)
	go func() { errc <- r.fromClient(ctx) }()
	go func() { errc <- r.fromServer(ctx) }()
	err := <-errc
	select {
	case <-r.gone:
		// The server's side ended: the calls waiting on it fail now, and
		// tell the client so before its connection closes.
		r.wg.Wait()
	default:
	}
	cancel()
	down.Close()
	up.Close()
	<-errc
	r.wg.Wait()
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// relay is the state of one proxied connection.
type relay struct {
	p        *Proxy
	session  string
	tokens   TokenCounter
	down, up mcp.Connection

	mu    sync.Mutex
	calls map[jsonrpc.ID]*pendingCall // governed tools/call awaiting the server
	lists map[jsonrpc.ID]bool         // tools/list awaiting the server
	gone  chan struct{}               // closed when the server's side ends
	wg    sync.WaitGroup
}

type pendingCall struct {
	resp      chan *jsonrpc.Response
	cancelled chan struct{}
}

func (r *relay) fromClient(ctx context.Context) error {
	for {
		msg, err := r.down.Read(ctx)
		if err != nil {
			return err
		}
		if req, ok := msg.(*jsonrpc.Request); ok {
			switch {
			case req.Method == "tools/call" && req.IsCall():
				r.wg.Add(1)
				go func() {
					defer r.wg.Done()
					r.call(ctx, req)
				}()
				continue
			case req.Method == "tools/list" && req.IsCall():
				r.mu.Lock()
				r.lists[req.ID] = true
				r.mu.Unlock()
			case req.Method == "notifications/cancelled":
				r.cancelled(req)
			}
		}
		if err := r.up.Write(ctx, msg); err != nil {
			return err
		}
	}
}

func (r *relay) fromServer(ctx context.Context) error {
	defer close(r.gone)
	for {
		msg, err := r.up.Read(ctx)
		if err != nil {
			return err
		}
		if resp, ok := msg.(*jsonrpc.Response); ok {
			r.mu.Lock()
			call := r.calls[resp.ID]
			isList := r.lists[resp.ID]
			delete(r.lists, resp.ID)
			r.mu.Unlock()
			switch {
			case call != nil:
				call.resp <- resp
				continue
			case isList:
				msg = r.filterTools(resp)
			}
		}
		// A message the client's side can't take now — over HTTP, a
		// notification while no stream is open — is lost, as it would be
		// without the gateway; it doesn't end the session. A client that
		// is gone ends it through fromClient's Read.
		if err := r.down.Write(ctx, msg); err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// cancelled wakes a governed call the client cancelled; the notification
// itself still goes on to the server.
func (r *relay) cancelled(req *jsonrpc.Request) {
	var params struct {
		RequestID any `json:"requestId"`
	}
	if json.Unmarshal(req.Params, &params) != nil {
		return
	}
	if f, ok := params.RequestID.(float64); ok && f == float64(int64(f)) {
		params.RequestID = int64(f)
	}
	id, err := jsonrpc.MakeID(params.RequestID)
	if err != nil {
		return
	}
	r.mu.Lock()
	call := r.calls[id]
	r.mu.Unlock()
	if call != nil {
		select {
		case <-call.cancelled:
		default:
			close(call.cancelled)
		}
	}
}

// call governs one tools/call: the request reaches the server only if
// Guard allows it, and the client gets the server's answer only if the
// call was recorded.
func (r *relay) call(ctx context.Context, req *jsonrpc.Request) {
	var params struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(req.Params, &params); err != nil || params.Name == "" {
		r.reply(ctx, &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInvalidParams,
			Message: "tools/call needs params with a tool name"}})
		return
	}
	pc := &pendingCall{resp: make(chan *jsonrpc.Response, 1), cancelled: make(chan struct{})}
	r.mu.Lock()
	if _, dup := r.calls[req.ID]; dup {
		r.mu.Unlock()
		r.reply(ctx, &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInvalidParams,
			Message: "a call with this id is already in progress"}})
		return
	}
	r.calls[req.ID] = pc
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.calls, req.ID)
		r.mu.Unlock()
	}()

	var resp *jsonrpc.Response
	err := r.p.Stack.Guard(ctx, agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: params.Name},
		func(ctx context.Context) (int64, error) {
			if err := r.up.Write(ctx, req); err != nil {
				return 0, fmt.Errorf("forwarding to the MCP server: %w", err)
			}
			select {
			case resp = <-pc.resp:
			case <-pc.cancelled:
				return 0, errors.New("cancelled by the client")
			case <-r.gone:
				return 0, errUpstreamGone
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			if resp.Error != nil {
				return 0, resp.Error
			}
			n, err := r.tokens.CountResult(resp.Result)
			if err != nil {
				return 0, err
			}
			return n, nil
		})

	var denied *agentsec.DeniedError
	switch {
	case err == nil:
		r.reply(ctx, resp)
	case errors.As(err, &denied):
		// The model sees why, as a tool error it can act on; the server
		// never saw the call, or its answer was not recorded and is
		// withheld.
		r.reply(ctx, deniedResult(req.ID, denied))
	case resp != nil && resp.Error != nil:
		r.reply(ctx, resp) // the server's own error, recorded
	default:
		select {
		case <-pc.cancelled:
			return // a cancelled request gets no answer
		default:
		}
		r.reply(ctx, &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}})
	}
}

// deniedResult is the CallToolResult a denied call gets.
func deniedResult(id jsonrpc.ID, d *agentsec.DeniedError) *jsonrpc.Response {
	result, _ := json.Marshal(map[string]any{
		"isError": true,
		"content": []map[string]string{{"type": "text", "text": d.Error()}},
	})
	return &jsonrpc.Response{ID: id, Result: result}
}

func (r *relay) reply(ctx context.Context, resp *jsonrpc.Response) {
	_ = r.down.Write(ctx, resp) // a client that is gone needs no answer
}

// filterTools removes from a tools/list result the tools the agent may
// not call. A result it cannot read is replaced by an error: the client
// must never see tools the gate would not check.
func (r *relay) filterTools(resp *jsonrpc.Response) *jsonrpc.Response {
	if resp.Error != nil {
		return resp
	}
	var result map[string]json.RawMessage
	var tools []json.RawMessage
	if json.Unmarshal(resp.Result, &result) != nil || json.Unmarshal(result["tools"], &tools) != nil {
		return &jsonrpc.Response{ID: resp.ID, Error: &jsonrpc.Error{Code: codeInternal,
			Message: "agentsec: the MCP server's tools/list result is malformed"}}
	}
	kept := tools[:0]
	for _, t := range tools {
		var tool struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(t, &tool) != nil {
			continue
		}
		if r.p.Stack.TrustGate.Check(agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: tool.Name}).Allowed {
			kept = append(kept, t)
		}
	}
	filtered, err := json.Marshal(kept)
	if err != nil {
		return &jsonrpc.Response{ID: resp.ID, Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}}
	}
	result["tools"] = filtered
	out, err := json.Marshal(result)
	if err != nil {
		return &jsonrpc.Response{ID: resp.ID, Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}}
	}
	return &jsonrpc.Response{ID: resp.ID, Result: out}
}
