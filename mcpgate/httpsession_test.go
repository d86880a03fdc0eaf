package mcpgate_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// openGateway serves a gateway for the agent "bot" (token "bot-token"),
// every tool public, in front of the given servers.
func openGateway(t *testing.T, calls int64, servers ...*server) (*httptest.Server, *agentsec.Stack) {
	t.Helper()
	stack := newStack(t, []trust.Rule{{Tool: "*", Level: "public"}}, []trust.Assignment{{Agent: "bot", Level: "public"}}, calls, nil)
	var ups []mcpgate.Upstream
	for _, s := range servers {
		ups = append(ups, mcpgate.Upstream{Name: s.name, Connect: s.connect})
	}
	gw := &mcpgate.Gateway{Stack: stack, Upstreams: ups,
		Agents: []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("bot-token")), Agent: "bot"}}}
	srv := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); srv.Close() })
	return srv, stack
}

// events reads a response's server-sent events, one JSON-RPC message
// each.
func events(t *testing.T, resp *http.Response) <-chan map[string]any {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want an event stream", ct)
	}
	ch := make(chan map[string]any)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var msg map[string]any
			if json.Unmarshal([]byte(data), &msg) == nil {
				ch <- msg
			}
		}
	}()
	return ch
}

// A server's request during a call reaches a client that holds no GET
// stream on the call's own response stream, and the client's answer,
// posted back, completes the call.
func TestHTTPSamplingOnTheCallsStream(t *testing.T) {
	srv, _ := openGateway(t, 10, newServer("files"))
	auth := map[string]string{"Authorization": "Bearer bot-token"}
	resp := doMCP(t, "POST", srv.URL, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"raw","version":"1"}}}`, auth)
	resp.Body.Close()
	id := resp.Header.Get("Mcp-Session-Id")
	auth["Mcp-Session-Id"] = id
	if got := postMCP(t, srv.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, auth); got != http.StatusAccepted {
		t.Fatalf("initialized: %d", got)
	}
	call := doMCP(t, "POST", srv.URL, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"ask","arguments":{"text":"hi"}}}`, auth)
	defer call.Body.Close()
	msgs := events(t, call)
	req := <-msgs
	if req["method"] != "sampling/createMessage" || req["id"] == nil {
		t.Fatalf("first event %v, want the server's sampling request", req)
	}
	answer, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": req["id"],
		"result": map[string]any{"role": "assistant", "model": "m", "content": map[string]any{"type": "text", "text": "sampled"}}})
	if got := postMCP(t, srv.URL, string(answer), auth); got != http.StatusAccepted {
		t.Fatalf("posting the answer: %d", got)
	}
	result := <-msgs
	if result["id"] != 2.0 || !strings.Contains(fmt.Sprint(result["result"]), "files heard: sampled") {
		t.Errorf("the call's answer: %v", result)
	}
}

// Hundreds of concurrent calls over many HTTP sessions: each session gets
// exactly its call limit, and the log verifies.
func TestHTTPConcurrentSessionsKeepTheirLimits(t *testing.T) {
	const sessions, perSession, limit = 12, 20, 7
	files := newServer("files")
	srv, stack := openGateway(t, limit, files)
	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for range sessions {
		client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
		cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: srv.URL,
			HTTPClient: &http.Client{Transport: bearer{"bot-token", http.DefaultTransport}}, MaxRetries: -1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		for range perSession {
			wg.Go(func() {
				res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "x"}})
				switch {
				case err != nil:
					t.Errorf("call: %v", err)
				case res.IsError:
					denied.Add(1)
				default:
					allowed.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if allowed.Load() != sessions*limit || denied.Load() != sessions*(perSession-limit) {
		t.Errorf("%d allowed and %d denied, want %d and %d", allowed.Load(), denied.Load(), sessions*limit, sessions*(perSession-limit))
	}
	if files.calls.Load() != sessions*limit {
		t.Errorf("the server saw %d calls, want %d", files.calls.Load(), sessions*limit)
	}
	n, err := stack.Audit.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	page, _ := stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventToolCall, Outcome: audit.OutcomeAllowed, Limit: 1000})
	if len(page.Records) != sessions*limit {
		t.Errorf("%d allowed calls in the log of %d records, want %d", len(page.Records), n, sessions*limit)
	}
}
