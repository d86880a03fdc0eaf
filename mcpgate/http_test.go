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
		Stack:  stack,
		Agents: []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"}, {TokenSHA256: sha256.Sum256([]byte("root-token")), Agent: "root"}},
		Upstream: func(ctx context.Context) (mcp.Connection, error) {
			serverSide, proxySide := mcp.NewInMemoryTransports()
			if _, err := up.server.Connect(ctx, serverSide, nil); err != nil {
				return nil, err
			}
			return proxySide.Connect(ctx)
		},
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

// A valid session id used with another agent's token is not found.
func TestHTTPSessionBelongsToItsAgent(t *testing.T) {
	srv, _, _ := newHTTPGateway(t)
	root, err := connect(t, srv, "root-token")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"tools/list"}`))
	req.Header.Set("Authorization", "Bearer alice-token")
	req.Header.Set("Mcp-Session-Id", root.ID())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("alice using root's session: status %d, want 404", resp.StatusCode)
	}
}

func TestHTTPGatewayRejects(t *testing.T) {
	srv, _, _ := newHTTPGateway(t)
	if _, err := connect(t, srv, "wrong-token"); err == nil {
		t.Error("a wrong token connected")
	}
	post := func(host, origin, auth, body string) int {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(body))
		if host != "" {
			req.Host = host
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`
	for _, tc := range []struct {
		name, host, origin, auth, body string
		want                           int
	}{
		{"no token", "", "", "", initialize, http.StatusUnauthorized},
		{"wrong scheme", "", "", "Basic abc", initialize, http.StatusUnauthorized},
		{"rebinding host", "evil.example:80", "", "Bearer alice-token", initialize, http.StatusForbidden},
		{"foreign origin", "", "http://evil.example", "Bearer alice-token", initialize, http.StatusForbidden},
		{"too large", "", "", "Bearer alice-token", `{"x":"` + strings.Repeat("a", 5<<20) + `"}`, http.StatusRequestEntityTooLarge},
	} {
		if got := post(tc.host, tc.origin, tc.auth, tc.body); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	// A session id that isn't the agent's is not found.
	req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(`{"jsonrpc":"2.0","id":2,"method":"ping"}`))
	req.Header.Set("Authorization", "Bearer alice-token")
	req.Header.Set("Mcp-Session-Id", "nope")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown session: status %d, want 404", resp.StatusCode)
	}
}
