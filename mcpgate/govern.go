package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
)

// callTool governs one tools/call: the request reaches its upstream only
// if Guard allows it, and the client gets the upstream's answer only if
// the call was recorded.
func (r *router) callTool(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	var params struct {
		Name string `json:"name"`
		Meta struct {
			ProgressToken json.RawMessage `json:"progressToken"`
		} `json:"_meta"`
	}
	if err := json.Unmarshal(req.Params, &params); err != nil || params.Name == "" {
		r.replyError(ctx, req.ID, codeInvalidParams, "agentsec: tools/call needs params with a tool name")
		return
	}
	u, upParams, routeErr := r.toolRoute(params.Name, req.Params)

	var resp *jsonrpc.Response
	err := r.p.Stack.Guard(ctx, agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: params.Name},
		func(ctx context.Context) (int64, error) {
			if routeErr != nil {
				return 0, routeErr
			}
			if isCancelled(cr) {
				return 0, errors.New("cancelled by the client")
			}
			type answer struct {
				resp *jsonrpc.Response
				err  error
			}
			ch := make(chan answer, 1)
			id, err := u.send(ctx, "tools/call", upParams, string(params.Meta.ProgressToken),
				func(resp *jsonrpc.Response, err error) { ch <- answer{resp, err} })
			if err != nil {
				return 0, err
			}
			if !r.sent(cr, u, id) {
				u.cancel(ctx, id, "cancelled by the client")
				return 0, errors.New("cancelled by the client")
			}
			select {
			case a := <-ch:
				if a.err != nil {
					return 0, a.err
				}
				resp = a.resp
			case <-cr.cancelled:
				return 0, errors.New("cancelled by the client")
			case <-ctx.Done():
				u.cancel(ctx, id, "the client went away")
				return 0, ctx.Err()
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
// it: in front of several upstreams, the name without its prefix.
func (r *router) toolRoute(name string, params json.RawMessage) (*upstreamConn, json.RawMessage, error) {
	if !r.multi {
		return r.ups[0], params, nil
	}
	u, inner := r.split(name)
	if u == nil {
		return nil, nil, fmt.Errorf("no upstream serves the tool %q; names are <upstream>%s<tool>", name, Separator)
	}
	upParams, err := withField(params, "name", inner)
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
