package mcpgate

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// A listKind is one of MCP's paginated lists.
type listKind struct {
	key        string // the result's array
	capability string // the server capability that offers it
	prefix     bool   // items are named, and prefixed with their upstream
	governed   bool   // items are tools: only those the agent may call are shown
	template   bool   // items are resource templates
	resource   bool   // items are resources
}

var (
	listTools     = listKind{key: "tools", capability: "tools", prefix: true, governed: true}
	listPrompts   = listKind{key: "prompts", capability: "prompts", prefix: true}
	listResources = listKind{key: "resources", capability: "resources", resource: true}
	listTemplates = listKind{key: "resourceTemplates", capability: "resources", template: true}
)

// list answers a list request. In front of one upstream it is forwarded
// as it is, cursors and all, and only a tool list is changed (filtered).
// In front of several, a cursor names an upstream and that upstream's own
// cursor; each page comes from one upstream, and the last page of one
// leads to the first of the next.
func (r *router) list(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, kind listKind) {
	if !r.multi {
		var rewrite func(*jsonrpc.Response) *jsonrpc.Response
		if kind.governed {
			rewrite = func(resp *jsonrpc.Response) *jsonrpc.Response { return r.rewriteList(resp, kind, nil, "") }
		}
		r.forward(ctx, req, cr, r.ups[0], req.Params, rewrite)
		return
	}
	var params map[string]json.RawMessage
	if len(req.Params) > 0 && json.Unmarshal(req.Params, &params) != nil {
		r.replyError(ctx, req.ID, codeInvalidParams, "agentsec: list params must be an object")
		return
	}
	var cursor string
	if raw, ok := params["cursor"]; ok && json.Unmarshal(raw, &cursor) != nil {
		r.replyError(ctx, req.ID, codeInvalidParams, "agentsec: the cursor must be a string")
		return
	}
	i, inner := 0, ""
	if cursor != "" {
		var ok bool
		if i, inner, ok = r.decodeCursor(cursor); !ok {
			r.replyError(ctx, req.ID, codeInvalidParams, "agentsec: invalid cursor")
			return
		}
	}
	r.async(func() { r.listPage(ctx, req, cr, kind, params, i, inner) })
}

// listPage answers with a page of upstream i's list. An upstream that is
// down is passed over, so the others' tools stay usable; calls to it fail
// clearly.
func (r *router) listPage(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, kind listKind, params map[string]json.RawMessage, i int, inner string) {
	for ; i < len(r.ups); i, inner = i+1, "" {
		u := r.ups[i]
		if inner == "" && !u.serves(kind.capability) {
			continue
		}
		if params == nil {
			params = map[string]json.RawMessage{}
		}
		if inner != "" {
			params["cursor"], _ = json.Marshal(inner)
		} else {
			delete(params, "cursor")
		}
		upParams, _ := json.Marshal(params)
		resp, err := u.call(ctx, req.Method, upParams, "")
		var ue *upstreamError
		if errors.As(err, &ue) {
			r.log.Warn("agentsec: listing upstream", "upstream", u.Name, "method", req.Method, "err", err)
			continue
		}
		if err != nil {
			r.replyFailure(ctx, cr, req.ID, err)
			return
		}
		if resp.Error != nil {
			r.reply(ctx, cr, req.ID, resp)
			return
		}
		r.reply(ctx, cr, req.ID, r.rewriteList(resp, kind, u, r.nextCursor(kind, i)))
		return
	}
	empty, _ := json.Marshal(map[string]any{kind.key: []any{}})
	r.reply(ctx, cr, req.ID, &jsonrpc.Response{Result: empty})
}

// nextCursor is the cursor of the first page after upstream i's last.
func (r *router) nextCursor(kind listKind, i int) string {
	for j := i + 1; j < len(r.ups); j++ {
		if r.ups[j].serves(kind.capability) {
			return r.encodeCursor(j, "")
		}
	}
	return ""
}

type cursor struct {
	Upstream string `json:"u"`
	Cursor   string `json:"c,omitempty"`
}

func (r *router) encodeCursor(i int, inner string) string {
	b, _ := json.Marshal(cursor{r.ups[i].Name, inner})
	return base64.RawURLEncoding.EncodeToString(b)
}

func (r *router) decodeCursor(s string) (int, string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	var c cursor
	if err != nil || json.Unmarshal(b, &c) != nil {
		return 0, "", false
	}
	for i, u := range r.ups {
		if u.Name == c.Upstream {
			return i, c.Cursor, true
		}
	}
	return 0, "", false
}

// rewriteList prepares an upstream's page for the client: tools the agent
// may not call are removed, names get their upstream's prefix, and, in
// front of several upstreams, the page's next cursor becomes the
// gateway's. Each item is re-encoded from what was checked, so an item
// with a duplicated "name" key can't show the client a name other than
// the one the gate saw. A page it can't read becomes an error: the
// client must never see tools the gate would not check.
func (r *router) rewriteList(resp *jsonrpc.Response, kind listKind, u *upstreamConn, next string) *jsonrpc.Response {
	if resp.Error != nil {
		return resp
	}
	var result map[string]json.RawMessage
	var items []json.RawMessage
	if json.Unmarshal(resp.Result, &result) != nil || result == nil || json.Unmarshal(result[kind.key], &items) != nil {
		return &jsonrpc.Response{Error: &jsonrpc.Error{Code: codeInternal,
			Message: "agentsec: the MCP server's " + kind.key + " list is malformed"}}
	}
	kept := make([]json.RawMessage, 0, len(items))
	for _, raw := range items {
		var item map[string]json.RawMessage
		if json.Unmarshal(raw, &item) != nil || item == nil {
			continue
		}
		var name, uri string
		json.Unmarshal(item["name"], &name)
		json.Unmarshal(item["uri"], &uri)
		if kind.prefix && u != nil && r.multi {
			name = u.Name + Separator + name
			item["name"], _ = json.Marshal(name)
		}
		if kind.governed && !r.mayCall(name) {
			continue
		}
		if u != nil && kind.resource && uri != "" {
			r.owners.set(uri, u)
		}
		if u != nil && kind.template {
			var template string
			json.Unmarshal(item["uriTemplate"], &template)
			r.owners.addTemplate(u, template)
		}
		b, err := json.Marshal(item)
		if err != nil {
			continue
		}
		kept = append(kept, b)
	}
	result[kind.key], _ = json.Marshal(kept)
	if r.multi {
		var inner string
		json.Unmarshal(result["nextCursor"], &inner)
		switch {
		case inner != "" && u != nil:
			result["nextCursor"], _ = json.Marshal(r.encodeCursor(r.index(u), inner))
		case next != "":
			result["nextCursor"], _ = json.Marshal(next)
		default:
			delete(result, "nextCursor")
		}
	}
	out, err := json.Marshal(result)
	if err != nil {
		return &jsonrpc.Response{Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}}
	}
	return &jsonrpc.Response{Result: out}
}

func (r *router) index(u *upstreamConn) int {
	for i, v := range r.ups {
		if v == u {
			return i
		}
	}
	return 0
}
