package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
)

// callTool governs one tools/call: the request reaches its upstream only
// if Guard allows it, and the client gets the upstream's answer only if
// the call was recorded and its result is within the session's budget.
//
// A call that left the gateway is spent: once sent, whatever happens —
// the client cancels, the server errs, times out or answers too much —
// its slot stays taken and the tokens of any result that comes count;
// the record says what happened. Only a call that never reached its
// server gives its slot back.
func (r *router) callTool(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	var began time.Time
	if r.p.Observer != nil {
		began = time.Now()
	}
	// The name checked is the one the server will read: keys are matched
	// exactly, and the server is sent the params re-encoded from what was
	// read, one "name" and all.
	params := object(req.Params)
	name := stringField(params, "name")
	if name == "" {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: tools/call needs params with a tool name")
		return
	}
	var token string
	if meta := object(params["_meta"]); meta != nil {
		token = string(meta["progressToken"])
	}
	asTask := wantsTask(params)
	u, inner, upParams, routeErr := r.toolRoute(name, params)
	call := agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: name, Attrs: r.attrs(ctx)}
	if routeErr == nil && !r.p.AllowUnlistedTools {
		if err := r.offered(ctx, u, inner); err != nil {
			if err.cause == nil {
				r.refuse(ctx, cr, req.ID, call, err.Error())
				return
			}
			routeErr = unsent(err.cause) // the server can't be asked: as if it were down
		}
	}
	if asTask && !r.roomForTask() {
		r.refuse(ctx, cr, req.ID, call, fmt.Sprintf("the session holds %d tasks whose results were not fetched, the most it may; fetch some first", maxTasks))
		return
	}

	var (
		resp     *jsonrpc.Response
		exchange time.Duration // the upstream's part, once sent
	)
	err := r.p.Stack.Guard(ctx, call, func(ctx context.Context) (int64, error) {
		if routeErr != nil {
			return 0, routeErr
		}
		var (
			err    error
			sentAt time.Time
		)
		if !began.IsZero() {
			sentAt = time.Now()
		}
		resp, err = u.exchange(ctx, "tools/call", upParams, token,
			func(id int64) bool { return r.sent(cr, u, id) })
		if !sentAt.IsZero() && (err == nil || wasSent(err)) {
			exchange = time.Since(sentAt)
		}
		switch {
		case err != nil && !wasSent(err):
			return 0, err // it never reached the server: the slot comes back
		case err != nil && isCancelled(cr):
			return 0, agentsec.Spent(fmt.Errorf("sent, then cancelled by the client: %w", err))
		case err != nil:
			return 0, agentsec.Spent(fmt.Errorf("sent, then failed: %w", err))
		case resp.Error != nil:
			return r.errorTokens(resp.Error), agentsec.Spent(fmt.Errorf("sent; the MCP server %q answered with an error: %w", u.Name, resp.Error))
		}
		if id, isTask := taskReceipt(resp.Result); isTask {
			if err := r.addTask(id, u, name); err != nil {
				return 0, agentsec.Spent(err)
			}
			return r.receiptTokens(resp.Result), nil
		}
		tokens, err := r.tokens.CountResult(resp.Result)
		switch {
		case err != nil:
			return 0, agentsec.Spent(fmt.Errorf("sent; the MCP server %q answered with a result that could not be counted: %w", u.Name, err))
		case isCancelled(cr):
			return tokens, agentsec.Spent(fmt.Errorf("sent to the MCP server %q, then cancelled by the client; its result was not delivered", u.Name))
		}
		return tokens, nil
	})

	var denied *agentsec.DeniedError
	switch {
	case err == nil:
		r.reply(ctx, cr, req.ID, resp)
	case errors.As(err, &denied):
		// The model sees why, as a tool error it can act on; the server
		// never saw the call, or its answer was not recorded or is over
		// budget, and is withheld.
		r.reply(ctx, cr, req.ID, deniedResult(denied))
	case resp != nil && resp.Error != nil:
		r.reply(ctx, cr, req.ID, resp) // the server's own error, recorded
	default:
		r.replyFailure(ctx, cr, req.ID, err)
	}
	if exchange > 0 {
		r.p.Observer.ObserveToolCall(u.Name, time.Since(began)-exchange, exchange)
	}
}

// refuse records a call refused before the trust gate and answers it as
// a denial.
func (r *router) refuse(ctx context.Context, cr *clientRequest, id jsonrpc.ID, call agentsec.Request, reason string) {
	err := r.p.Stack.Refuse(ctx, call, reason)
	denied, _ := errors.AsType[*agentsec.DeniedError](err)
	r.reply(ctx, cr, id, deniedResult(denied))
}

// errorTokens counts the text of an upstream's error answer, which
// reaches the model as a result would.
func (r *router) errorTokens(e error) int64 {
	var we *jsonrpc.Error
	if !errors.As(e, &we) {
		return 0
	}
	text := we.Message
	if len(we.Data) > 0 {
		text += " " + string(we.Data)
	}
	return r.countText(text)
}

// receiptTokens counts what a task's receipt hands the model at once:
// the immediate response a server may offer in its _meta.
func (r *router) receiptTokens(result json.RawMessage) int64 {
	meta := object(object(result)["_meta"])
	return r.countText(stringField(meta, "io.modelcontextprotocol/model-immediate-response"))
}

// countText counts a text as a tool result's text content.
func (r *router) countText(text string) int64 {
	if text == "" {
		return 0
	}
	result, _ := json.Marshal(map[string]any{"content": []map[string]string{{"type": "text", "text": text}}})
	n, err := r.tokens.CountResult(result)
	if err != nil {
		return int64(len(text)) // a counter that fails: one token a byte, never less
	}
	return n
}

// toolRoute finds the upstream that serves a tool, the tool's name
// there, and the params to send it: in front of several upstreams, with
// the name without its prefix.
func (r *router) toolRoute(name string, params map[string]json.RawMessage) (*upstreamConn, string, json.RawMessage, error) {
	u, inner := r.ups[0], name
	if r.multi {
		if u, inner = r.split(name); u == nil {
			return nil, "", nil, fmt.Errorf("no upstream serves the tool %q; names are <upstream>%s<tool>", name, Separator)
		}
	}
	// No other spelling of "name", or of "task", reaches the server: one
	// that reads keys without regard to case must find only what the
	// gateway read.
	onlyExactKeys(params, "name", "task")
	params["name"] = appendString(nil, inner)
	return u, inner, joinObject(params), nil
}

// onlyExactKeys deletes from params every key that differs from one of
// keys only by case.
func onlyExactKeys(params map[string]json.RawMessage, keys ...string) {
	for k := range params {
		if caselessTwin(k, keys...) {
			delete(params, k)
		}
	}
}

// caselessTwin reports whether k differs from one of keys only by case:
// a key Go's decoder would take for it, and the servers would not.
func caselessTwin(k string, keys ...string) bool {
	for _, key := range keys {
		if k != key && strings.EqualFold(k, key) {
			return true
		}
	}
	return false
}

// deniedResult is the CallToolResult a denied call gets.
func deniedResult(d *agentsec.DeniedError) *jsonrpc.Response {
	result, _ := json.Marshal(map[string]any{
		"isError": true,
		"content": []map[string]string{{"type": "text", "text": d.Error()}},
	})
	return &jsonrpc.Response{Result: result}
}

// mayCall reports whether the agent may call the tool; tools/list shows
// only those.
func (r *router) mayCall(tool string) bool {
	return r.p.Stack.TrustGate.Check(agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: tool}).Allowed
}

// withField returns a JSON object with one string field set.
func withField(obj json.RawMessage, key, value string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, errors.New("params must be an object")
	}
	m[key], _ = json.Marshal(value)
	return json.Marshal(m)
}
