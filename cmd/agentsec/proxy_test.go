package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// echoServerEnv makes the test binary run runEchoServer instead of the
// tests: the proxy tests start it as their upstream MCP server.
const echoServerEnv = "AGENTSEC_TEST_ECHO_SERVER"

type echoArgs struct {
	Text string `json:"text"`
}

// runEchoServer serves two echoing tools over stdio, and counts the calls
// that reach it in the file named by the environment variable.
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
	cfg := fmt.Sprintf(`namespace: proxy-test
trust:
  rules:
    - {tool: read, level: public}
    - {tool: admin, level: privileged}
  agents:
    - {id: desktop, level: verified}
budget: {tokens: 100000, calls: 2}
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
}

func TestProxyConfigErrors(t *testing.T) {
	dir := t.TempDir()
	noAgent := filepath.Join(dir, "a.yaml")
	os.WriteFile(noAgent, []byte("namespace: n\nbudget: {tokens: 1, calls: 1}\nupstreams: [{name: x, command: y}]\n"), 0o600)
	twoUp := filepath.Join(dir, "b.yaml")
	os.WriteFile(twoUp, []byte("namespace: n\nbudget: {tokens: 1, calls: 1}\ntrust: {agents: [{id: a, level: public}]}\nstdio_agent: a\nupstreams: [{name: x, command: y}, {name: z, command: w}]\n"), 0o600)
	for path, want := range map[string]string{noAgent: "needs stdio_agent", twoUp: "exactly one upstream"} {
		m := &Main{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard}
		err := m.Run(context.Background(), []string{"proxy", "-config", path})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("proxy -config %s = %v, want %q", filepath.Base(path), err, want)
		}
	}
}
