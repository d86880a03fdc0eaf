package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/store/sqlite"
)

// echoServerEnv makes the test binary run runEchoServer instead of the
// tests: the proxy tests start it as their upstream MCP server.
const echoServerEnv = "AGENTSEC_TEST_ECHO_SERVER"

type echoArgs struct {
	Text string `json:"text"`
}

// runEchoServer serves two echoing tools over stdio, and counts the calls
// that reach it in the file named by the environment variable. A third,
// block, writes the server's process id beside that file (".pid") and
// never answers.
func runEchoServer() {
	server := mcp.NewServer(&mcp.Implementation{Name: "echo", Version: "1"}, nil)
	var calls atomic.Int64
	handler := func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
		n := calls.Add(1)
		_ = os.WriteFile(os.Getenv(echoServerEnv), []byte(fmt.Sprint(n)), 0o600)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + in.Text}}}, nil, nil
	}
	mcp.AddTool(server, &mcp.Tool{Name: "read", Description: "echo"}, handler)
	mcp.AddTool(server, &mcp.Tool{Name: "admin", Description: "echo"}, handler)
	mcp.AddTool(server, &mcp.Tool{Name: "block", Description: "never answers"},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ echoArgs) (*mcp.CallToolResult, any, error) {
			_ = os.WriteFile(os.Getenv(echoServerEnv)+".pid", []byte(fmt.Sprint(os.Getpid())), 0o600)
			<-ctx.Done()
			return nil, nil, ctx.Err()
		})
	if err := server.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
		fmt.Fprintln(os.Stderr, "echo server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// agentsec proxy, run in-process on pipes, in front of the echo server
// run as a child process, driven by the Go SDK's client.
func TestProxyOverStdio(t *testing.T) {
	dir := t.TempDir()
	callsFile := filepath.Join(dir, "calls")
	skey, _, err := audit.GenerateKey("proxy-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "proxy.key"), []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`namespace: proxy-test
trust:
  rules:
    - {tool: read, level: public}
    - {tool: admin, level: privileged}
  agents:
    - {id: desktop, level: verified}
budget: {tokens: 100000, calls: 2}
audit: {path: audit.db, key_file: proxy.key}
stdio_agent: desktop
upstreams:
  - name: echo
    command: %q
    env: {%s: %q}
`, os.Args[0], echoServerEnv, callsFile)
	cfgPath := filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	clientToProxy, proxyIn := io.Pipe()
	proxyOut, proxyToClient := io.Pipe()
	var stderr strings.Builder
	m := &Main{Stdin: clientToProxy, Stdout: proxyToClient, Stderr: &stderr}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, []string{"proxy", "-config", cfgPath}) }()

	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.IOTransport{Reader: proxyOut, Writer: proxyIn}, nil)
	if err != nil {
		t.Fatalf("connect through the proxy: %v (stderr: %s)", err, stderr.String())
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) != 1 || tools.Tools[0].Name != "read" {
		t.Fatalf("tools/list = %+v, %v; want only read", tools, err)
	}
	call := func(tool string) *mcp.CallToolResult {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"text": "hi"}})
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		return res
	}
	if res := call("read"); res.IsError || res.Content[0].(*mcp.TextContent).Text != "echo: hi" {
		t.Errorf("read = %+v", res)
	}
	if res := call("admin"); !res.IsError {
		t.Errorf("admin was allowed")
	}
	call("read")
	if res := call("read"); !res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "call limit reached") {
		t.Errorf("third read = %+v, want the budget denial", res)
	}
	if got, _ := os.ReadFile(callsFile); string(got) != "2" {
		t.Errorf("the server saw %q calls, want 2", got)
	}

	cs.Close()
	proxyIn.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("proxy = %v (stderr: %s)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Error("proxy did not stop when the client went away")
	}
	cancel()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "audit.db"), sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	page, err := audit.Query(context.Background(), st, audit.Filter{Event: "tool.call"})
	if err != nil || len(page.Records) != 4 {
		t.Errorf("the durable log holds %d tool calls (%v), want 4", len(page.Records), err)
	}
}

// The upstream server killed (SIGKILL) in the middle of a call: the call
// gets an error naming it, the proxy stays up and starts the server
// afresh for the next call, and the audit log verifies.
func TestProxyUpstreamKilledMidCall(t *testing.T) {
	dir := t.TempDir()
	callsFile := filepath.Join(dir, "calls")
	skey, vkey, err := audit.GenerateKey("proxy-test")
	if err != nil {
		t.Fatal(err)
	}
	skeyFile, pubFile := filepath.Join(dir, "proxy.key"), filepath.Join(dir, "proxy.pub")
	if err := os.WriteFile(skeyFile, []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`namespace: proxy-test
trust:
  rules: [{tool: read, level: public}, {tool: block, level: public}]
  agents: [{id: desktop, level: verified}]
budget: {tokens: 100000, calls: 100}
audit: {path: audit.db, key_file: proxy.key}
stdio_agent: desktop
upstreams:
  - {name: echo, command: %q, env: {%s: %q}}
`, os.Args[0], echoServerEnv, callsFile)
	cfgPath := filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	clientToProxy, proxyIn := io.Pipe()
	proxyOut, proxyToClient := io.Pipe()
	var stderr syncbuf.Buffer
	m := &Main{Stdin: clientToProxy, Stdout: proxyToClient, Stderr: &stderr}
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, []string{"proxy", "-config", cfgPath}) }()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, &mcp.IOTransport{Reader: proxyOut, Writer: proxyIn}, nil)
	if err != nil {
		t.Fatalf("connect: %v (stderr: %s)", err, stderr.String())
	}
	errc := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "block", Arguments: map[string]any{"text": "x"}})
		errc <- err
	}()
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(callsFile + ".pid")
		fmt.Sscan(string(data), &pid)
	}
	if pid == 0 {
		t.Fatal("the blocking call never reached the server")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), `the MCP server "echo" closed the connection before answering`) {
			t.Errorf("the call whose server was killed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call whose server was killed never ended")
	}
	time.Sleep(1100 * time.Millisecond) // reconnects wait a second after a loss
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read", Arguments: map[string]any{"text": "again"}})
	if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "echo: again" {
		t.Errorf("the call after the restart = %+v, %v (stderr: %s)", res, err, stderr.String())
	}
	cs.Close()
	proxyIn.Close()
	if err := <-done; err != nil {
		t.Errorf("proxy = %v", err)
	}
	if err := os.WriteFile(pubFile, []byte(vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	v := &Main{Stdout: &out, Stderr: &out}
	if err := v.Run(ctx, []string{"audit", "verify", "-db", filepath.Join(dir, "audit.db"), "-pubkey", pubFile}); err != nil {
		t.Errorf("audit verify: %v\n%s", err, out.String())
	}
}

func TestProxyConfigErrors(t *testing.T) {
	dir := t.TempDir()
	noDisk := filepath.Join(dir, "c.yaml")
	os.WriteFile(noDisk, []byte("namespace: n\nbudget: {tokens: 1, calls: 1}\ntrust: {agents: [{id: a, level: public}]}\nstdio_agent: a\nupstreams: [{name: x, command: y}]\n"), 0o600)
	noAgent := filepath.Join(dir, "a.yaml")
	os.WriteFile(noAgent, []byte("namespace: n\nbudget: {tokens: 1, calls: 1}\nupstreams: [{name: x, command: y}]\n"), 0o600)
	noUpstream := filepath.Join(dir, "d.yaml")
	os.WriteFile(noUpstream, []byte("namespace: n\nbudget: {tokens: 1, calls: 1}\nlisten: 127.0.0.1:1\ntrust: {agents: [{id: a, level: public}]}\nstdio_agent: a\n"), 0o600)
	for _, tc := range []struct{ cmd, path, want string }{
		{"proxy", noAgent, "needs stdio_agent"},
		{"proxy", noDisk, "keeps its audit log durably"},
		{"proxy", noUpstream, "needs an upstream MCP server"},
		// serve with no upstreams serves the decision API alone, but
		// needs someone who may call it.
		{"serve", noUpstream, "no agent or operator has a token_sha256"},
		{"serve", noDisk, "serve needs listen"},
	} {
		cmd, path, want := tc.cmd, tc.path, tc.want
		m := &Main{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard}
		err := m.Run(context.Background(), []string{cmd, "-config", path})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s -config %s = %v, want %q", cmd, filepath.Base(path), err, want)
		}
	}
}

type bearerTransport struct{ token string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// agentsec serve, in-process, in front of the echo server as a child
// process, driven by the Go SDK's streamable-HTTP client.
func TestServeOverHTTP(t *testing.T) {
	dir := t.TempDir()
	skey, _, err := audit.GenerateKey("serve-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "serve.key"), []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := "ags_test-token"
	sum := sha256.Sum256([]byte(token))
	cfg := fmt.Sprintf(`namespace: serve-test
trust:
  rules:
    - {tool: read, level: public}
    - {tool: admin, level: privileged}
  agents:
    - {id: bot, level: public, token_sha256: %x}
budget: {tokens: 100000, calls: 10}
audit: {path: audit.db, key_file: serve.key}
listen: 127.0.0.1:0
admin: {listen: ":0"}
upstreams:
  - name: echo
    command: %q
    env: {%s: %q}
`, sum, os.Args[0], echoServerEnv, filepath.Join(dir, "calls"))
	cfgPath := filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr syncbuf.Buffer
	m := &Main{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, []string{"serve", "-config", cfgPath}) }()
	addr := regexp.MustCompile(`serving MCP on (http://\S+)`)
	var endpoint string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := addr.FindStringSubmatch(stderr.String()); m != nil {
			endpoint = m[1]
			break
		}
	}
	if endpoint == "" {
		t.Fatalf("serve did not start: %s", stderr.String())
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint,
		HTTPClient: &http.Client{Transport: bearerTransport{token}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v (stderr: %s)", err, stderr.String())
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read", Arguments: map[string]any{"text": "over http"}})
	if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "echo: over http" {
		t.Errorf("read = %+v, %v", res, err)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "admin", Arguments: map[string]any{"text": "x"}})
	if err != nil || !res.IsError {
		t.Errorf("admin = %+v, %v; want denied", res, err)
	}
	// The probes are on the admin listener, on loopback, apart from the
	// agents' port.
	if m := regexp.MustCompile(`admin endpoints on (http://127\.0\.0\.1:\d+)/`).FindStringSubmatch(stderr.String()); m == nil {
		t.Errorf("no admin listener on loopback: %s", stderr.String())
	} else {
		for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "audit log: ok\nbudget store: ok\n"} {
			resp, err := http.Get(m[1] + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != want {
				t.Errorf("%s = %d %q, want 200 %q", path, resp.StatusCode, body, want)
			}
		}
		if resp, err := http.Get(endpoint + "readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Error("the agents' port answers /readyz")
			}
		}
		// The calls above, counted by the admin listener's /metrics.
		resp, err := http.Get(m[1] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`agentsec_decisions_total{event="tool.call",gen_ai_tool_name="read",outcome="allow",reason="allowed"} 1`,
			`agentsec_decisions_total{event="tool.call",gen_ai_tool_name="admin",outcome="deny",reason="trust_denied"} 1`,
			"agentsec_audit_log_up 1",
			"agentsec_mcp_sessions 1",
			"agentsec_audit_append_errors_total 0",
			// Only the allowed call reached the upstream.
			`agentsec_gateway_added_duration_seconds_count{upstream="echo"} 1`,
			`agentsec_upstream_duration_seconds_count{upstream="echo"} 1`,
			`agentsec_upstream_up{upstream="echo"} 1`,
			`agentsec_upstream_failures_total{upstream="echo"} 0`,
		} {
			if !strings.Contains(string(body), want+"\n") {
				t.Errorf("/metrics lacks %s:\n%s", want, body)
			}
		}
	}
	cs.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
	// The durable log holds both calls and verifies.
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "audit.db"), sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	page, err := audit.Query(context.Background(), st, audit.Filter{Event: "tool.call"})
	if err != nil || len(page.Records) != 2 || page.Records[0].Agent != "bot" || page.Records[0].Session != cs.ID() {
		t.Errorf("records = %+v, %v", page.Records, err)
	}
}
