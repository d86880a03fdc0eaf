package mcpgate_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules:  []trust.Rule{{Tool: "fs.*", Level: "public"}, {Tool: "shell.exec", Level: "privileged"}},
			Agents: []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "root", Level: "privileged"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: 2},
		AuditNamespace: "http-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	up := newUpstream()
	gw := &mcpgate.Gateway{
		Stack:     stack,
		Agents:    []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"}, {TokenSHA256: sha256.Sum256([]byte("root-token")), Agent: "root"}},
		Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}},
		LocalOnly: true,
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); srv.Close() })
	return srv, stack, up
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
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
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
	resp.Body.Close()
	return resp.StatusCode
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

func TestHTTPGatewayRejects(t *testing.T) {
	srv, _, _ := newHTTPGateway(t)
	if _, err := connect(t, srv, "wrong-token"); err == nil {
		t.Error("a wrong token connected")
	}
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`
	alice := "Bearer alice-token"
	for _, tc := range []struct {
		name    string
		headers map[string]string
		body    string
		want    int
	}{
		{"no token", nil, initialize, http.StatusUnauthorized},
		{"wrong scheme", map[string]string{"Authorization": "Basic abc"}, initialize, http.StatusUnauthorized},
		{"rebinding host", map[string]string{"Authorization": alice, "Host": "evil.example:80"}, initialize, http.StatusForbidden},
		{"foreign origin", map[string]string{"Authorization": alice, "Origin": "http://evil.example"}, initialize, http.StatusForbidden},
		{"too large", map[string]string{"Authorization": alice}, `{"x":"` + strings.Repeat("a", 5<<20) + `"}`, http.StatusRequestEntityTooLarge},
		{"unknown session", map[string]string{"Authorization": alice, "Mcp-Session-Id": "nope"}, `{"jsonrpc":"2.0","id":2,"method":"ping"}`, http.StatusNotFound},
	} {
		if got := postMCP(t, srv.URL, tc.body, tc.headers); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
}
