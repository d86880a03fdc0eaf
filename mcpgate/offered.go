package mcpgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// The tools an upstream offered. A tools/call is sent only for a name
// its upstream listed in this session, byte for byte: the trust gate
// checks the name the client sent, and a server that reads names loosely
// — without regard to case, trailing spaces or NULs, or by a look-alike —
// must not run a listed tool under a name the gate judged as another,
// say one that fell to the policy's default level. Names are learned from
// every tools/list page the gateway relays, and, for a call to a name not
// known yet, by listing the server's tools itself (all pages) — once per
// change of its list (notifications/tools/list_changed).

// Bounds on what the gateway learns of one upstream's tools.
const (
	maxOfferedTools = 10_000 // names kept
	maxToolPages    = 100    // pages read when listing on its own
)

// offeredTools is what one upstream listed.
type offeredTools struct {
	mu    sync.Mutex
	names map[string]bool
	// complete: names holds the server's whole list as of the last
	// listing, and no list_changed came since.
	complete bool
	changes  int        // counts list changes, so a listing can tell it saw the latest
	listing  sync.Mutex // one listing of the server's own at a time
}

// add records names the server listed.
func (o *offeredTools) add(name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.names == nil {
		o.names = map[string]bool{}
	}
	if len(o.names) < maxOfferedTools {
		o.names[name] = true
	}
}

func (o *offeredTools) has(name string) (found, complete bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.names[name], o.complete
}

// changed notes that the server's list changed: a name not known yet
// is worth another listing.
func (o *offeredTools) changed() {
	o.mu.Lock()
	o.complete = false
	o.changes++
	o.mu.Unlock()
}

// errNotOffered is why a call to a name the server never listed is
// refused.
type errNotOffered struct {
	upstream, tool string
	cause          error // the listing failed, if it did
}

func (e *errNotOffered) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("the tools of the MCP server %q could not be listed to check %q: %v", e.upstream, e.tool, e.cause)
	}
	return fmt.Sprintf("the MCP server %q offers no tool named %q in this session (tools/list); names must match exactly", e.upstream, e.tool)
}

// offered reports, as an *errNotOffered, a tool name u never listed: it
// lists u's tools itself first if the name is unknown and its list may
// have changed since it was last read.
func (r *router) offered(ctx context.Context, u *upstreamConn, name string) *errNotOffered {
	found, complete := u.tools.has(name)
	if !found && !complete {
		u.tools.listing.Lock()
		// Another call may have listed them while this one waited.
		if found, complete = u.tools.has(name); !found && !complete {
			if err := r.listAllTools(ctx, u); err != nil {
				u.tools.listing.Unlock()
				return &errNotOffered{upstream: u.Name, tool: name, cause: err}
			}
			found, _ = u.tools.has(name)
		}
		u.tools.listing.Unlock()
	}
	if found {
		return nil
	}
	return &errNotOffered{upstream: u.Name, tool: name}
}

// listAllTools reads every page of u's tools/list, learning its names;
// the list is complete once read through, unless it changed meanwhile.
func (r *router) listAllTools(ctx context.Context, u *upstreamConn) error {
	u.tools.mu.Lock()
	changes := u.tools.changes
	u.tools.mu.Unlock()
	cursor := ""
	for range maxToolPages {
		params := json.RawMessage("{}")
		if cursor != "" {
			params, _ = json.Marshal(map[string]string{"cursor": cursor})
		}
		resp, err := u.call(ctx, "tools/list", params, "")
		if err == nil && resp.Error != nil {
			err = resp.Error
		}
		if err != nil {
			return err
		}
		// Names are read with exact keys, as listItems reads those the
		// client is shown and the server reads a call's.
		page := object(resp.Result)
		var tools []json.RawMessage
		if page == nil || json.Unmarshal(page["tools"], &tools) != nil {
			return errors.New("its tools/list result is malformed")
		}
		for _, t := range tools {
			if name := stringField(object(t), "name"); name != "" {
				u.tools.add(name)
			}
		}
		if cursor = stringField(page, "nextCursor"); cursor == "" {
			break
		}
	}
	// Past maxToolPages the rest is more than the gateway keeps.
	u.tools.mu.Lock()
	u.tools.complete = u.tools.changes == changes
	u.tools.mu.Unlock()
	return nil
}

// toolsChanged marks u's tool list stale when it says so.
func toolsChanged(u *upstreamConn, req *jsonrpc.Request) {
	if req.Method == "notifications/tools/list_changed" {
		u.tools.changed()
	}
}

// maxListedTools bounds the names a Gateway remembers of one upstream's
// listings, for its operators.
const maxListedTools = 1000

// listedTools are the tools upstreams listed, in every session: what the
// operators' console shows of them.
type listedTools struct {
	mu    sync.Mutex
	names map[string]map[string]bool // by upstream
}

func (l *listedTools) add(upstream, tool string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.names == nil {
		l.names = map[string]map[string]bool{}
	}
	set := l.names[upstream]
	if set == nil {
		set = map[string]bool{}
		l.names[upstream] = set
	}
	if len(set) < maxListedTools {
		set[tool] = true
	}
}

func (l *listedTools) all() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]string, len(l.names))
	for u, set := range l.names {
		out[u] = slices.Sorted(maps.Keys(set))
	}
	return out
}
