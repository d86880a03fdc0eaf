package mcpgate

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// Separator joins an upstream's name and one of its tool or prompt names
// when the gateway fronts several upstreams: "github__create_issue". Tool
// names with '.' are refused by some model APIs, so the separator keeps
// to letters, digits, '_' and '-'; upstream names may not contain it, so
// the first separator in a name always ends the upstream's part.
const Separator = "__"

// split finds the upstream a prefixed name belongs to.
func (r *router) split(name string) (*upstreamConn, string) {
	prefix, inner, ok := strings.Cut(name, Separator)
	if !ok || inner == "" {
		return nil, ""
	}
	for _, u := range r.ups {
		if u.Name == prefix {
			return u, inner
		}
	}
	return nil, ""
}

// routeByName sends prompts/get to the upstream its prompt's prefix names.
func (r *router) routeByName(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	if !r.multi {
		r.forward(ctx, req, cr, r.ups[0], req.Params, nil)
		return
	}
	name := stringField(object(req.Params), "name")
	u, inner := r.split(name)
	if u == nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, fmt.Sprintf("agentsec: no upstream serves the prompt %q; names are <upstream>%s<prompt>", name, Separator))
		return
	}
	upParams, err := withField(req.Params, "name", inner)
	if err != nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: "+err.Error())
		return
	}
	r.forward(ctx, req, cr, u, upParams, nil)
}

// routeByURI sends a resource request to the upstream that listed the
// resource, else to those whose templates could produce it, else to each
// upstream with resources in turn until one knows it.
func (r *router) routeByURI(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	if !r.multi {
		r.forward(ctx, req, cr, r.ups[0], req.Params, nil)
		return
	}
	uri := stringField(object(req.Params), "uri")
	if uri == "" {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: "+req.Method+" needs params with a uri")
		return
	}
	resp, u, err := r.tryEach(ctx, r.resourceCandidates(uri), req.Method, req.Params)
	if err != nil {
		r.replyFailure(ctx, cr, req.ID, err)
		return
	}
	if resp.Error == nil {
		r.owners.set(uri, u)
	}
	r.reply(ctx, cr, req.ID, resp)
}

// complete routes completion/complete by what it completes: a prompt's
// argument by the prompt's prefix, a resource template's by its URI.
func (r *router) complete(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	if !r.multi {
		r.forward(ctx, req, cr, r.ups[0], req.Params, nil)
		return
	}
	params := object(req.Params)
	ref := object(params["ref"])
	if ref == nil {
		r.replyError(ctx, cr, req.ID, codeInvalidParams, "agentsec: completion/complete needs params with a ref")
		return
	}
	switch refType, refName := stringField(ref, "type"), stringField(ref, "name"); refType {
	case "ref/prompt":
		u, inner := r.split(refName)
		if u == nil {
			r.replyError(ctx, cr, req.ID, codeInvalidParams, fmt.Sprintf("agentsec: no upstream serves the prompt %q", refName))
			return
		}
		params["ref"], _ = withField(params["ref"], "name", inner)
		upParams, _ := json.Marshal(params)
		r.forward(ctx, req, cr, u, upParams, nil)
	case "ref/resource":
		resp, _, err := r.tryEach(ctx, r.resourceCandidates(stringField(ref, "uri")), req.Method, req.Params)
		if err != nil {
			r.replyFailure(ctx, cr, req.ID, err)
			return
		}
		r.reply(ctx, cr, req.ID, resp)
	default:
		r.replyError(ctx, cr, req.ID, codeInvalidParams, fmt.Sprintf("agentsec: unknown completion ref type %q", refType))
	}
}

// tryEach sends a request to each candidate in turn and returns the first
// answer that is not an error, or else the last answer or failure.
func (r *router) tryEach(ctx context.Context, candidates []*upstreamConn, method string, params json.RawMessage) (*jsonrpc.Response, *upstreamConn, error) {
	var last *jsonrpc.Response
	var lastErr error = &jsonrpc.Error{Code: codeResourceNotFound, Message: "agentsec: no upstream serves this resource"}
	for _, u := range candidates {
		resp, err := u.call(ctx, method, params, "")
		if err == nil && resp.Error == nil {
			return resp, u, nil
		}
		last, lastErr = resp, err
	}
	if lastErr != nil {
		return nil, nil, lastErr
	}
	return last, nil, nil
}

// resourceCandidates lists the upstreams that may serve a URI, likeliest
// first.
func (r *router) resourceCandidates(uri string) []*upstreamConn {
	if u := r.owners.get(uri); u != nil {
		return []*upstreamConn{u}
	}
	var byTemplate, rest []*upstreamConn
	for _, u := range r.ups {
		switch {
		case r.owners.templateMatches(u, uri):
			byTemplate = append(byTemplate, u)
		case u.serves("resources"):
			rest = append(rest, u)
		}
	}
	return append(byTemplate, rest...)
}

// broadcast sends a request to every upstream with the capability and
// answers with an empty result once they all have, or with the first
// error if none succeeded.
func (r *router) broadcast(ctx context.Context, req *jsonrpc.Request, cr *clientRequest, capability string) {
	if !r.multi {
		r.forward(ctx, req, cr, r.ups[0], req.Params, nil)
		return
	}
	var (
		mu       sync.Mutex
		ok       bool
		firstErr error
		wg       sync.WaitGroup
	)
	for _, u := range r.ups {
		if !u.serves(capability) {
			continue
		}
		wg.Go(func() {
			resp, err := u.call(ctx, req.Method, req.Params, "")
			if err == nil && resp.Error != nil {
				err = resp.Error
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok = true
			} else if firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	if !ok && firstErr != nil {
		r.replyFailure(ctx, cr, req.ID, firstErr)
		return
	}
	r.reply(ctx, cr, req.ID, &jsonrpc.Response{Result: json.RawMessage("{}")})
}

// maxOwnedResources bounds how many listed URIs the gateway remembers the
// upstream of; beyond it, requests for the others try each upstream.
const maxOwnedResources = 100_000

// resourceOwners remembers which upstream listed which resource, and the
// literal start of each upstream's resource templates.
type resourceOwners struct {
	mu        sync.Mutex
	byURI     map[string]*upstreamConn
	uriBytes  int // the keys' bytes, at most maxOwnedBytes
	templates map[*upstreamConn][]string
}

// maxOwnedBytes bounds the bytes of the URIs remembered, as
// maxOwnedResources bounds their number: a client reading URIs of
// megabytes, which an upstream with a template answers, must not make
// its session hold them all.
const maxOwnedBytes = 8 << 20

func (o *resourceOwners) set(uri string, u *upstreamConn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byURI == nil {
		o.byURI = map[string]*upstreamConn{}
	}
	if _, ok := o.byURI[uri]; ok {
		o.byURI[uri] = u
	} else if len(o.byURI) < maxOwnedResources && o.uriBytes+len(uri) <= maxOwnedBytes {
		o.byURI[uri] = u
		o.uriBytes += len(uri)
	}
}

func (o *resourceOwners) get(uri string) *upstreamConn {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byURI[uri]
}

func (o *resourceOwners) addTemplate(u *upstreamConn, template string) {
	prefix, _, _ := strings.Cut(template, "{")
	if prefix == "" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.templates == nil {
		o.templates = map[*upstreamConn][]string{}
	}
	for _, p := range o.templates[u] {
		if p == prefix {
			return
		}
	}
	if len(o.templates[u]) < 1000 {
		o.templates[u] = append(o.templates[u], prefix)
	}
}

func (o *resourceOwners) templateMatches(u *upstreamConn, uri string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.templates[u] {
		if strings.HasPrefix(uri, p) {
			return true
		}
	}
	return false
}
