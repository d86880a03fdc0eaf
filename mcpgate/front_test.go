package mcpgate_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

const frontMaxBytes = 64 << 10

// frontedGateway serves a gateway behind its front, admitRequest, with
// the given body timeout, and returns the server's address and the
// gateway's upstream.
func frontedGateway(t *testing.T, bodyTimeout time.Duration) (string, *upstream) {
	t.Helper()
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}}, []trust.Assignment{{Agent: "alice", Level: "verified"}}, 10, nil)
	up := newUpstream()
	gw := &mcpgate.Gateway{
		Stack:           stack,
		Agents:          []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"}},
		Upstreams:       []mcpgate.Upstream{{Name: "files", Connect: up.connect}},
		LocalOnly:       true,
		MaxRequestBytes: frontMaxBytes,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r, ok := mcpgate.AdmitRequest(w, r, frontMaxBytes, bodyTimeout)
		if ok {
			gw.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(func() { gw.Close(); srv.Close() })
	return srv.Listener.Addr().String(), up
}

// sendRaw opens a connection to addr and writes data to it: a request
// that may stop anywhere.
func sendRaw(t *testing.T, addr, data string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, data); err != nil {
		t.Fatal(err)
	}
	return c
}

// answerThenClose reads the gateway's answer on c and waits for the
// gateway to close the connection, within 10s in all: generous, for a
// noisy machine, and far below forever.
func answerThenClose(t *testing.T, c net.Conn) (*http.Response, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("after the answer (%d %q), the connection is still open (%v); want it closed", resp.StatusCode, body, err)
	}
	return resp, string(body)
}

const (
	aliceAuth = "Authorization: Bearer alice-token\r\n"
	jsonType  = "Content-Type: application/json\r\n"
)

// A request that declares a body over the limit is refused before any of
// it is read — authenticated or not, and without a 100 Continue — and
// its connection closed.
func TestFrontRefusesDeclaredTooLarge(t *testing.T) {
	addr, _ := frontedGateway(t, time.Minute)
	for _, tt := range []struct{ name, headers string }{
		{"authenticated", aliceAuth + jsonType},
		{"unauthenticated", jsonType},
		{"expecting 100 Continue", aliceAuth + jsonType + "Expect: 100-continue\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := sendRaw(t, addr, "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"+tt.headers+"Content-Length: 5000000\r\n\r\n")
			resp, body := answerThenClose(t, c)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "declares 5000000 bytes") {
				t.Errorf("got %d %q, want 413 saying what was declared", resp.StatusCode, body)
			}
		})
	}
}

// A body that never finishes is cut off within the bound, and the
// connection closed, whoever sends it.
func TestFrontBodyTimeout(t *testing.T) {
	const bound = 300 * time.Millisecond
	addr, _ := frontedGateway(t, bound)
	for _, tt := range []struct {
		name, request string
		want          int
		says          string
	}{
		{"authenticated", "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + aliceAuth + jsonType + "Content-Length: 100\r\n\r\n{\"jsonrpc\"",
			http.StatusRequestTimeout, "did not arrive within 300ms"},
		{"authenticated, chunked", "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + aliceAuth + jsonType + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"jso\r\n",
			http.StatusRequestTimeout, "did not arrive within 300ms"},
		{"unauthenticated", "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + jsonType + "Content-Length: 100\r\n\r\n{\"jsonrpc\"",
			http.StatusUnauthorized, "bearer token is required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := sendRaw(t, addr, tt.request)
			resp, body := answerThenClose(t, c)
			if resp.StatusCode != tt.want || !strings.Contains(body, tt.says) {
				t.Errorf("got %d %q, want %d saying %q", resp.StatusCode, body, tt.want, tt.says)
			}
		})
	}
}

// A 401 closes the connection: an unauthenticated client can't keep it.
// Gateway.ServeHTTP does that by calling closeAfterReply before its 401.
func TestFront401ClosesConnection(t *testing.T) {
	addr, _ := frontedGateway(t, time.Minute)
	body := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
	for _, tt := range []struct{ name, request string }{
		{"GET without a token", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"},
		{"POST with a wrong token", "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n" + jsonType +
			"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := sendRaw(t, addr, tt.request)
			resp, body := answerThenClose(t, c)
			if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
				t.Errorf("got %d %q, Connection: %q; want 401 with Connection: close", resp.StatusCode, body, resp.Header.Get("Connection"))
			}
		})
	}
}

// The body's bound ends with the body: a call's response may stream far
// longer, and a GET stream lasts as long as its session.
func TestFrontKeepsLongResponses(t *testing.T) {
	const bound = 200 * time.Millisecond
	addr, up := frontedGateway(t, bound)
	url := "http://" + addr + "/"
	ctx := context.Background()
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url,
		HTTPClient: &http.Client{Transport: bearer{"alice-token", http.DefaultTransport}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	type result struct {
		res *mcp.CallToolResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fs.block", Arguments: map[string]any{"text": "x"}})
		done <- result{res, err}
	}()

	// A GET stream of a session of its own, opened with no body.
	resp := doMCP(t, "POST", url, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`,
		map[string]string{"Authorization": "Bearer alice-token"})
	resp.Body.Close()
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d, session %q", resp.StatusCode, sid)
	}
	get, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	get.Header.Set("Authorization", "Bearer alice-token")
	get.Header.Set("Accept", "text/event-stream")
	get.Header.Set("Mcp-Session-Id", sid)
	stream, err := http.DefaultClient.Do(get)
	if err != nil || stream.StatusCode != http.StatusOK {
		t.Fatalf("GET stream: %v, %v", stream, err)
	}
	defer stream.Body.Close()
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, stream.Body)
		ended <- err
	}()

	time.Sleep(5 * bound)
	select {
	case err := <-ended:
		t.Errorf("the GET stream ended after %v: %v", 5*bound, err)
	case r := <-done:
		t.Fatalf("the call ended before it was released: %+v, %v", r.res, r.err)
	default:
	}
	close(up.release)
	select {
	case r := <-done:
		if r.err != nil || r.res.IsError || r.res.Content[0].(*mcp.TextContent).Text != "released" {
			t.Errorf("a call longer than the body's bound: %+v, %v", r.res, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not end once released")
	}
}
