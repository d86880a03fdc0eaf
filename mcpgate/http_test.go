package mcpgate_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// bearer adds a bearer token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func newHTTPGateway(t *testing.T) (*httptest.Server, *agentsec.Stack, *upstream) {
	t.Helper()
	srv, stack, up, _ := newHTTPGatewayWith(t, nil)
	return srv, stack, up
}

// newHTTPGatewayWith is newHTTPGateway with the gateway adjusted by set
// before it serves.
func newHTTPGatewayWith(t *testing.T, set func(*mcpgate.Gateway)) (*httptest.Server, *agentsec.Stack, *upstream, *mcpgate.Gateway) {
	t.Helper()
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}, {Tool: "shell.exec", Level: "privileged"}}, []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "root", Level: "privileged"}}, 2, nil)
	up := newUpstream()
	gw := &mcpgate.Gateway{
		Stack:     stack,
		Agents:    []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"}, {TokenSHA256: sha256.Sum256([]byte("root-token")), Agent: "root"}},
		Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}},
		LocalOnly: true,
	}
	if set != nil {
		set(gw)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); srv.Close() })
	return srv, stack, up, gw
}

func connect(t *testing.T, srv *httptest.Server, token string) (*mcp.ClientSession, error) {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	return client.Connect(context.Background(), &mcp.StreamableClientTransport{
		Endpoint:   srv.URL,
		HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}},
		MaxRetries: -1,
	}, nil)
}

func TestHTTPGatewayGovernsEachAgent(t *testing.T) {
	srv, stack, up := newHTTPGateway(t)
	ctx := context.Background()
	alice, err := connect(t, srv, "alice-token")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	root, err := connect(t, srv, "root-token")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	tools, err := alice.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range tools.Tools {
		if tool.Name == "shell.exec" {
			t.Error("alice sees shell.exec")
		}
	}
	res, err := alice.CallTool(ctx, &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}})
	if err != nil || !res.IsError {
		t.Errorf("alice's shell.exec = %+v, %v; want denied", res, err)
	}
	res, err = root.CallTool(ctx, &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}})
	if err != nil || res.IsError {
		t.Errorf("root's shell.exec = %+v, %v; want allowed", res, err)
	}
	if up.calls.Load() != 1 {
		t.Errorf("server saw %d calls, want 1", up.calls.Load())
	}
	// Each MCP session is its own budget session.
	page, err := stack.Audit.Query(ctx, audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 2 || page.Records[0].Session == page.Records[1].Session ||
		page.Records[0].Agent != "alice" || page.Records[1].Agent != "root" {
		t.Errorf("records = %+v, %v", page.Records, err)
	}
	if page.Records[0].Session != alice.ID() {
		t.Errorf("budget session %q, want the MCP session id %q", page.Records[0].Session, alice.ID())
	}
}

// postMCP posts one JSON-RPC body to the gateway with the given headers
// ("Host" sets the request's host) and returns the status code.
func postMCP(t *testing.T, url, body string, headers map[string]string) int {
	t.Helper()
	resp := doMCP(t, "POST", url, body, headers)
	resp.Body.Close()
	return resp.StatusCode
}

// doMCP sends one HTTP request to the gateway, as an MCP client would:
// JSON in, JSON or an event stream accepted, unless headers say
// otherwise. The caller closes the response's body.
func doMCP(t *testing.T, method, url, body string, headers map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// A valid session id used with another agent's token is not found.
func TestHTTPSessionBelongsToItsAgent(t *testing.T) {
	srv, _, _ := newHTTPGateway(t)
	root, err := connect(t, srv, "root-token")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	got := postMCP(t, srv.URL, `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`,
		map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": root.ID()})
	if got != http.StatusNotFound {
		t.Errorf("alice using root's session: status %d, want 404", got)
	}
}

const initializeBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`

func TestHTTPGatewayRejects(t *testing.T) {
	srv, _, up := newHTTPGateway(t)
	if _, err := connect(t, srv, "wrong-token"); err == nil {
		t.Error("a wrong token connected")
	}
	alice := "Bearer alice-token"
	auth := map[string]string{"Authorization": alice}
	for _, tc := range []struct {
		name    string
		method  string
		headers map[string]string
		body    string
		want    int
		code    int64 // the JSON-RPC error in the body, if any
	}{
		{"no token", "POST", nil, initializeBody, http.StatusUnauthorized, 0},
		{"wrong scheme", "POST", map[string]string{"Authorization": "Basic abc"}, initializeBody, http.StatusUnauthorized, 0},
		{"rebinding host", "POST", map[string]string{"Authorization": alice, "Host": "evil.example:80"}, initializeBody, http.StatusForbidden, 0},
		{"foreign origin", "POST", map[string]string{"Authorization": alice, "Origin": "http://evil.example"}, initializeBody, http.StatusForbidden, 0},
		{"too large", "POST", auth, `{"x":"` + strings.Repeat("a", 5<<20) + `"}`, http.StatusRequestEntityTooLarge, -32600},
		{"unknown session", "POST", map[string]string{"Authorization": alice, "Mcp-Session-Id": "nope"}, `{"jsonrpc":"2.0","id":2,"method":"ping"}`, http.StatusNotFound, 0},
		{"not JSON", "POST", auth, `{"jsonrpc":`, http.StatusBadRequest, -32700},
		{"not JSON-RPC", "POST", auth, `{"id":1,"method":"initialize"}`, http.StatusBadRequest, -32600},
		{"batch", "POST", auth, "[" + initializeBody + "]", http.StatusBadRequest, -32600},
		{"empty", "POST", auth, ``, http.StatusBadRequest, -32600},
		{"text body", "POST", map[string]string{"Authorization": alice, "Content-Type": "text/plain"}, initializeBody, http.StatusUnsupportedMediaType, 0},
		{"call without a session", "POST", auth, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`, http.StatusBadRequest, -32600},
		{"notification without a session", "POST", auth, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, http.StatusBadRequest, -32600},
		{"discover without a session", "POST", auth, `{"jsonrpc":"2.0","id":4,"method":"server/discover"}`, http.StatusOK, -32601},
		{"GET without a session", "GET", map[string]string{"Authorization": alice, "Accept": "text/event-stream"}, "", http.StatusBadRequest, 0},
		{"DELETE without a session", "DELETE", auth, "", http.StatusBadRequest, 0},
		{"PUT", "PUT", auth, initializeBody, http.StatusMethodNotAllowed, 0},
	} {
		resp := doMCP(t, tc.method, srv.URL, tc.body, tc.headers)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d (%s)", tc.name, resp.StatusCode, tc.want, body)
		}
		if tc.code != 0 {
			var r struct {
				Error struct{ Code int64 } `json:"error"`
			}
			if json.Unmarshal(body, &r) != nil || r.Error.Code != tc.code {
				t.Errorf("%s: body %s, want JSON-RPC error %d", tc.name, body, tc.code)
			}
		}
	}
	if n := up.connects.Load(); n != 0 {
		t.Errorf("refused requests opened %d upstream connections, want none", n)
	}
	// And the gateway still serves.
	cs, err := connect(t, srv, "alice-token")
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fs.read", Arguments: map[string]any{"text": "ok"}}); err != nil || res.IsError {
		t.Errorf("a call after the refusals: %+v, %v", res, err)
	}
}

// The SDK client probes with server/discover first; the gateway, which
// keeps sessions, answers so that it falls back to initialize — with one
// upstream connection per session, none for the probe.
func TestHTTPOneUpstreamConnectionPerSession(t *testing.T) {
	srv, _, up := newHTTPGateway(t)
	for range 3 {
		cs, err := connect(t, srv, "alice-token")
		if err != nil {
			t.Fatal(err)
		}
		if cs.ID() == "" {
			t.Error("no MCP session id")
		}
		cs.Close()
	}
	if n := up.connects.Load(); n != 3 {
		t.Errorf("3 sessions opened %d upstream connections, want 3", n)
	}
}

func TestHTTPSessionLimits(t *testing.T) {
	srv, _, _, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) {
		g.MaxSessions = 1
		g.IdleTimeout = time.Second
	})
	first, err := connect(t, srv, "alice-token")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, srv, "root-token"); err == nil || !strings.Contains(err.Error(), "Service Unavailable") {
		t.Errorf("a second session past the limit: %v, want 503 Service Unavailable", err)
	}
	first.Close() // DELETE ends it, freeing its place

	// A session is idle when no request of it is open — no POST, and no
	// GET stream, which the SDK client holds for as long as it lives.
	resp := doMCP(t, "POST", srv.URL, initializeBody, map[string]string{"Authorization": "Bearer alice-token"})
	resp.Body.Close()
	id := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("initialize: %d, session %q", resp.StatusCode, id)
	}
	ping := `{"jsonrpc":"2.0","id":2,"method":"ping"}`
	if got := postMCP(t, srv.URL, ping, map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": id}); got != http.StatusOK {
		t.Errorf("ping on a fresh session: %d", got)
	}
	time.Sleep(3 * time.Second) // idle past IdleTimeout, reaped every quarter of it
	if got := postMCP(t, srv.URL, ping, map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": id}); got != http.StatusNotFound {
		t.Errorf("ping on a session idle past its timeout: %d, want 404", got)
	}
	again, err := connect(t, srv, "root-token")
	if err != nil {
		t.Fatalf("a session after the idle one ended: %v", err)
	}
	again.Close()
}
