package mcpgate

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"sync"

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
	owned      bool   // items are tasks: only the session's own are shown
}

var (
	listTools     = listKind{key: "tools", capability: "tools", prefix: true, governed: true}
	listPrompts   = listKind{key: "prompts", capability: "prompts", prefix: true}
	listResources = listKind{key: "resources", capability: "resources", resource: true}
	listTemplates = listKind{key: "resourceTemplates", capability: "resources", template: true}
	listTasks     = listKind{key: "tasks", capability: "tasks", owned: true}
)

// list answers a list request. In front of one upstream it is forwarded
// as it is, cursors and all, and only a tool list is changed (filtered).
// In front of several, each gateway page merges one page of every
// upstream: the first, of each upstream's first — the whole list, for
// servers that don't page, so a client that never follows nextCursor
// still sees every upstream — and the next, of each upstream that said it
// has more, whose cursors the gateway's cursor carries.
func (r *router) list(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, kind listKind) {
	if !r.multi {
		var rewrite func(*jsonrpc.Response) *jsonrpc.Response
		if kind.governed || kind.owned {
			rewrite = func(resp *jsonrpc.Response) *jsonrpc.Response {
				items, err := r.listItems(resp, kind, r.ups[0])
				if err != nil {
					return &jsonrpc.Response{Error: err}
				}
				return r.listPage(resp.Result, kind, items, nil)
			}
		}
		r.forward(ctx, req, cr, r.ups[0], req.Params, rewrite)
		return
	}
	var params map[string]json.RawMessage
	if len(req.Params) > 0 && json.Unmarshal(req.Params, &params) != nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: list params must be an object")
		return
	}
	var cursor string
	if raw, ok := params["cursor"]; ok && json.Unmarshal(raw, &cursor) != nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: the cursor must be a string")
		return
	}
	var pages []pageCursor
	if cursor == "" {
		for _, u := range r.ups {
			if u.serves(kind.capability) {
				pages = append(pages, pageCursor{Upstream: u.Name})
			}
		}
	} else if pages = r.decodeCursor(cursor); pages == nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: invalid cursor")
		return
	}
	r.async(func() { r.mergePages(ctx, req, cr, kind, params, pages) })
}

// mergePages asks each upstream for its page at once and answers with
// them merged, in the upstreams' order. An upstream that is down or
// fails is passed over, so the others' tools stay usable; calls to it
// fail clearly.
func (r *router) mergePages(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, kind listKind, params map[string]json.RawMessage, pages []pageCursor) {
	type page struct {
		items []json.RawMessage
		next  string
		err   error
	}
	got := make([]page, len(pages))
	var wg sync.WaitGroup
	for i, pc := range pages {
		u := r.upstream(pc.Upstream)
		wg.Go(func() {
			p := maps.Clone(params)
			if p == nil {
				p = map[string]json.RawMessage{}
			}
			delete(p, "cursor")
			if pc.Cursor != "" {
				p["cursor"], _ = json.Marshal(pc.Cursor)
			}
			upParams, _ := json.Marshal(p)
			resp, err := u.call(ctx, req.Method, upParams, "")
			if err == nil && resp.Error != nil {
				err = resp.Error
			}
			if err != nil {
				got[i].err = err
				return
			}
			items, werr := r.listItems(resp, kind, u)
			if werr != nil {
				got[i].err = werr
				return
			}
			var next struct {
				NextCursor string `json:"nextCursor"`
			}
			json.Unmarshal(resp.Result, &next)
			got[i] = page{items: items, next: next.NextCursor}
		})
	}
	wg.Wait()
	var items []json.RawMessage
	var more []pageCursor
	var firstErr error
	failed := 0
	for i, p := range got {
		if p.err != nil {
			r.log.Warn("agentsec: listing upstream", "upstream", pages[i].Upstream, "method", req.Method, "err", p.err)
			failed++
			if firstErr == nil {
				firstErr = p.err
			}
			continue
		}
		items = append(items, p.items...)
		if p.next != "" {
			more = append(more, pageCursor{Upstream: pages[i].Upstream, Cursor: p.next})
		}
	}
	if failed > 0 && failed == len(got) {
		r.replyFailure(ctx, cr, req.ID, firstErr)
		return
	}
	r.reply(ctx, cr, req.ID, r.listPage(nil, kind, items, more))
}

// pageCursor is where one upstream's list goes on.
type pageCursor struct {
	Upstream string `json:"u"`
	Cursor   string `json:"c"`
}

func (r *router) encodeCursor(pages []pageCursor) string {
	b, _ := json.Marshal(pages)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor reads a cursor of the gateway's; nil means it is not one.
func (r *router) decodeCursor(s string) []pageCursor {
	b, err := base64.RawURLEncoding.DecodeString(s)
	var pages []pageCursor
	if err != nil || json.Unmarshal(b, &pages) != nil || len(pages) == 0 || len(pages) > len(r.ups) {
		return nil
	}
	for _, p := range pages {
		if r.upstream(p.Upstream) == nil || p.Cursor == "" {
			return nil
		}
	}
	return pages
}

func (r *router) upstream(name string) *upstreamConn {
	for _, u := range r.ups {
		if u.Name == name {
			return u
		}
	}
	return nil
}

// listPage is a list result: base's other fields (in front of one
// upstream: its page as it was, but for the items), the items, and the
// gateway's next cursor in front of several.
func (r *router) listPage(base json.RawMessage, kind listKind, items []json.RawMessage, more []pageCursor) *jsonrpc.Response {
	result := map[string]json.RawMessage{}
	json.Unmarshal(base, &result)
	if items == nil {
		items = []json.RawMessage{}
	}
	result[kind.key], _ = json.Marshal(items)
	if r.multi {
		delete(result, "nextCursor")
		if len(more) > 0 {
			result["nextCursor"], _ = json.Marshal(r.encodeCursor(more))
		}
	}
	out, err := json.Marshal(result)
	if err != nil {
		return &jsonrpc.Response{Error: &jsonrpc.Error{Code: codeInternal, Message: "agentsec: " + err.Error()}}
	}
	return &jsonrpc.Response{Result: out}
}

// listItems prepares upstream u's page for the client: tools the agent
// may not call, and tasks of other sessions, are removed, and, in front
// of several upstreams, names get their upstream's prefix and resources
// are remembered as u's. The tools u listed are remembered as the names a
// call to u may use (offered.go). Each item
// is re-encoded from what was checked, so an item with a duplicated
// "name" key can't show the client a name other than the one the gate
// saw. A page it can't read is an error: the client must never see
// tools the gate would not check.
func (r *router) listItems(resp *jsonrpc.Response, kind listKind, u *upstreamConn) ([]json.RawMessage, *jsonrpc.Error) {
	if resp.Error != nil {
		var we *jsonrpc.Error
		if errors.As(resp.Error, &we) {
			return nil, we
		}
		return nil, &jsonrpc.Error{Code: codeInternal, Message: resp.Error.Error()}
	}
	var result map[string]json.RawMessage
	var items []json.RawMessage
	if json.Unmarshal(resp.Result, &result) != nil || result == nil || json.Unmarshal(result[kind.key], &items) != nil {
		return nil, &jsonrpc.Error{Code: codeInternal, Message: "agentsec: the MCP server's " + kind.key + " list is malformed"}
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
		if kind.governed && name != "" {
			u.tools.add(name)
		}
		if kind.owned && !r.ownsTask(item) {
			continue
		}
		if kind.prefix && r.multi {
			name = u.Name + Separator + name
			item["name"], _ = json.Marshal(name)
		}
		if kind.governed && r.p.onListed != nil {
			r.p.onListed(u.Name, name)
		}
		if kind.governed && !r.mayCall(name) {
			continue
		}
		if kind.resource && uri != "" {
			r.owners.set(uri, u)
		}
		if kind.template {
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
	return kept, nil
}
