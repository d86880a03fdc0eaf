package mcpgate

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Version is the gateway's version, as it introduces itself to clients
// in front of several upstreams.
var Version = "devel"

// initialize answers the client's initialize. In front of one upstream
// the upstream's answer is the gateway's. In front of several, each is
// initialized with the client's parameters and the answers are merged:
// the capabilities any upstream offers, the instructions of each, and
// one protocol version, which they must agree on.
func (r *router) initialize(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	if r.initParams() != nil {
		r.replyError(ctx, cr, req.ID, codeInvalidRequest, "agentsec: the session is already initialized")
		return
	}
	results := r.fanOut(ctx, req)
	if !r.multi {
		res := results[0]
		if err := res.failure(); err != nil {
			res.u.observeUpstream(false)
			r.replyFailure(ctx, cr, req.ID, err)
			return
		}
		if err := res.u.setInitialized(res.resp.Result); err != nil {
			r.replyError(ctx, cr, req.ID, codeInternal, "agentsec: the MCP server's "+err.Error())
			return
		}
		if r.record(ctx, req, cr) {
			r.reply(ctx, cr, req.ID, res.resp)
		}
		return
	}
	var ok []upstreamResult
	for _, res := range results {
		err := res.failure()
		if err == nil {
			err = res.u.setInitialized(res.resp.Result)
		}
		if err != nil {
			// Passed over, and initialized afresh when a request needs it.
			r.log.Warn("agentsec: initializing upstream", "upstream", res.u.Name, "err", err)
			res.u.observeUpstream(false)
			res.u.close()
			continue
		}
		ok = append(ok, res)
	}
	if len(ok) == 0 {
		r.replyFailure(ctx, cr, req.ID, results[0].failure())
		return
	}
	merged, err := mergeInitialize(ok)
	if err != nil {
		r.replyError(ctx, cr, req.ID, codeInternal, "agentsec: "+err.Error())
		return
	}
	if r.record(ctx, req, cr) {
		r.reply(ctx, cr, req.ID, &jsonrpc.Response{Result: merged})
	}
}

// record keeps the client's initialize parameters, and has the session
// recorded where the proxy records sessions, before the client is
// answered. If it can't be recorded, the client gets an error and the
// session stays uninitialized.
func (r *router) record(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) bool {
	params := req.Params
	if params == nil {
		params = json.RawMessage("{}")
	}
	if r.p.onInitialized != nil {
		if err := r.p.onInitialized(ctx, params); err != nil {
			// The upstreams are initialized afresh when the client tries
			// again.
			for _, u := range r.ups {
				u.close()
			}
			r.replyError(ctx, cr, req.ID, codeInternal, "agentsec: "+err.Error())
			return false
		}
	}
	r.initialized(params)
	return true
}

// initialized keeps the client's initialize parameters, which are never
// nil: their being set is what marks the session initialized.
func (r *router) initialized(params json.RawMessage) {
	r.mu.Lock()
	r.init = params
	r.mu.Unlock()
}

// adopt initializes the router with the parameters the client gave
// another replica: each upstream is initialized as the client did when it
// connects, and its first connection is not announced as a restart.
func (r *router) adopt(params json.RawMessage) {
	for _, u := range r.ups {
		u.mu.Lock()
		u.inherited = true
		u.mu.Unlock()
	}
	r.initialized(params)
}

// discover answers server/discover, the sessionless protocol's
// introduction, as initialize is answered; in front of several upstreams
// they must all answer it.
func (r *router) discover(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	results := r.fanOut(ctx, req)
	for _, res := range results {
		if err := res.failure(); err != nil {
			r.replyFailure(ctx, cr, req.ID, err)
			return
		}
		res.u.setCapabilities(res.resp.Result)
	}
	if !r.multi {
		r.reply(ctx, cr, req.ID, results[0].resp)
		return
	}
	merged, err := mergeDiscover(results)
	if err != nil {
		r.replyError(ctx, cr, req.ID, codeInternal, "agentsec: "+err.Error())
		return
	}
	r.reply(ctx, cr, req.ID, &jsonrpc.Response{Result: merged})
}

type upstreamResult struct {
	u    *upstreamConn
	resp *jsonrpc.Response
	err  error
}

// failure is the result's error, whether the upstream failed to answer
// or answered with an error.
func (res upstreamResult) failure() error {
	if res.err != nil {
		return res.err
	}
	if res.resp.Error != nil {
		return res.resp.Error
	}
	return nil
}

// fanOut sends the request to every upstream at once.
func (r *router) fanOut(ctx context.Context, req *jsonrpc.Request) []upstreamResult {
	results := make([]upstreamResult, len(r.ups))
	var wg sync.WaitGroup
	for i, u := range r.ups {
		wg.Go(func() {
			resp, err := u.call(ctx, req.Method, req.Params, "")
			results[i] = upstreamResult{u, resp, err}
		})
	}
	wg.Wait()
	return results
}

// mergeInitialize combines several initialize results into the gateway's.
func mergeInitialize(results []upstreamResult) (json.RawMessage, error) {
	var version string
	var versions []string
	for _, res := range results {
		var r struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		json.Unmarshal(res.resp.Result, &r)
		versions = append(versions, fmt.Sprintf("%s speaks %q", res.u.Name, r.ProtocolVersion))
		if version == "" {
			version = r.ProtocolVersion
		} else if r.ProtocolVersion != version {
			return nil, fmt.Errorf("the MCP servers behind the gateway agree on no protocol version: %s", strings.Join(versions, ", "))
		}
	}
	out := map[string]any{
		"protocolVersion": version,
		"capabilities":    mergeCapabilities(results),
		"serverInfo":      serverInfo(results),
	}
	if s := mergeInstructions(results); s != "" {
		out["instructions"] = s
	}
	return json.Marshal(out)
}

// mergeDiscover combines several server/discover results: the versions
// all upstreams support, and their capabilities and instructions.
func mergeDiscover(results []upstreamResult) (json.RawMessage, error) {
	var common []string
	for i, res := range results {
		var r struct {
			SupportedVersions []string `json:"supportedVersions"`
		}
		json.Unmarshal(res.resp.Result, &r)
		if i == 0 {
			common = r.SupportedVersions
			continue
		}
		common = slices.DeleteFunc(common, func(v string) bool { return !slices.Contains(r.SupportedVersions, v) })
	}
	if len(common) == 0 {
		return nil, fmt.Errorf("the MCP servers behind the gateway support no protocol version in common")
	}
	out := map[string]any{
		"supportedVersions": common,
		"capabilities":      mergeCapabilities(results),
		// The sessionless protocol names the server in every result's _meta.
		"_meta": map[string]any{mcp.MetaKeyServerInfo: serverInfo(results)},
	}
	if s := mergeInstructions(results); s != "" {
		out["instructions"] = s
	}
	return json.Marshal(out)
}

// mergeCapabilities offers every capability any upstream offers. Within a
// capability, a flag (listChanged, subscribe) is set if any upstream sets
// it; any other setting is the first upstream's.
func mergeCapabilities(results []upstreamResult) map[string]any {
	merged := map[string]map[string]any{}
	for _, res := range results {
		var r struct {
			Capabilities map[string]map[string]any `json:"capabilities"`
		}
		json.Unmarshal(res.resp.Result, &r)
		for name, settings := range r.Capabilities {
			m := merged[name]
			if m == nil {
				m = map[string]any{}
				merged[name] = m
			}
			for k, v := range settings {
				prev, seen := m[k]
				if b, isBool := v.(bool); isBool && seen {
					if pb, ok := prev.(bool); ok {
						m[k] = pb || b
					}
					continue
				}
				if !seen {
					m[k] = v
				}
			}
		}
	}
	out := make(map[string]any, len(merged))
	for k, v := range merged {
		out[k] = v
	}
	return out
}

// mergeInstructions gives each upstream's instructions under its name,
// and tells the model how names are prefixed.
func mergeInstructions(results []upstreamResult) string {
	var parts []string
	for _, res := range results {
		var r struct {
			Instructions string `json:"instructions"`
		}
		json.Unmarshal(res.resp.Result, &r)
		if r.Instructions != "" {
			parts = append(parts, fmt.Sprintf("## %s (tools and prompts named %s%s…)\n\n%s", res.u.Name, res.u.Name, Separator, r.Instructions))
		}
	}
	return strings.Join(parts, "\n\n")
}

// serverInfo is how the gateway introduces itself in front of several
// upstreams.
func serverInfo(results []upstreamResult) map[string]string {
	names := make([]string, len(results))
	for i, res := range results {
		names[i] = res.u.Name
	}
	return map[string]string{"name": "agentsec", "version": Version, "title": "agentsec gateway: " + strings.Join(names, ", ")}
}
