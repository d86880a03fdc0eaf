package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
)

// callTool governs one tools/call: the request reaches its upstream only
// if Guard allows it, and the client gets the upstream's answer only if
// the call was recorded.
func (r *router) callTool(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	// The name checked is the one the server will read: keys are matched
	// exactly, and the server is sent the params re-encoded from what was
	// read, one "name" and all.
	params := object(req.Params)
	name := stringField(params, "name")
	if name == "" {
		r.replyError(ctx, req.ID, codeInvalidParams, "agentsec: tools/call needs params with a tool name")
		return
	}
	var token string
	if meta := object(params["_meta"]); meta != nil {
		token = string(meta["progressToken"])
	}
	u, upParams, routeErr := r.toolRoute(name, params)

	var resp *jsonrpc.Response
	err := r.p.Stack.Guard(ctx, agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: name},
		func(ctx context.Context) (int64, error) {
			if routeErr != nil {
				return 0, routeErr
			}
			var err error
			resp, err = u.exchange(ctx, "tools/call", upParams, token,
				func(id int64) bool { return r.sent(cr, u, id) })
			if err != nil {
				return 0, err
			}
			if resp.Error != nil {
				return 0, resp.Error
			}
			return r.tokens.CountResult(resp.Result)
		})

	var denied *agentsec.DeniedError
	switch {
	case err == nil:
		r.reply(ctx, cr, req.ID, resp)
	case errors.As(err, &denied):
		// The model sees why, as a tool error it can act on; the server
		// never saw the call, or its answer was not recorded and is
		// withheld.
		r.reply(ctx, cr, req.ID, deniedResult(denied))
	case resp != nil && resp.Error != nil:
		r.reply(ctx, cr, req.ID, resp) // the server's own error, recorded
	default:
		r.replyFailure(ctx, cr, req.ID, err)
	}
}

// toolRoute finds the upstream that serves a tool and the params to send
// it: in front of several upstreams, with the name without its prefix.
func (r *router) toolRoute(name string, params map[string]json.RawMessage) (*upstreamConn, json.RawMessage, error) {
	u, inner := r.ups[0], name
	if r.multi {
		if u, inner = r.split(name); u == nil {
			return nil, nil, fmt.Errorf("no upstream serves the tool %q; names are <upstream>%s<tool>", name, Separator)
		}
	}
	for k := range params {
		// No other spelling of "name" reaches the server: one that reads
		// keys without regard to case must find only the name checked.
		if k != "name" && strings.EqualFold(k, "name") {
			delete(params, k)
		}
	}
	params["name"], _ = json.Marshal(inner)
	upParams, err := json.Marshal(params)
	return u, upParams, err
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
