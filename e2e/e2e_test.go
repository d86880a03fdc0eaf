// Package e2e tests the agentsec gateway end to end with real MCP servers
// from npm (@modelcontextprotocol/server-everything and server-filesystem)
// driven by the official TypeScript SDK client, over stdio and over
// streamable HTTP. It needs Node.js and `npm ci` in this directory; .ci/run
// does both.
package e2e_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth/extauth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

var agentsecBin string // built once by TestMain

func TestMain(m *testing.M) {
	code := func() int {
		if _, err := os.Stat("node_modules/@modelcontextprotocol/sdk"); err != nil {
			return m.Run() // the tests skip, saying why
		}
		dir, err := os.MkdirTemp("", "agentsec-e2e-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		agentsecBin = filepath.Join(dir, "agentsec")
		build := exec.Command("go", "build", "-o", agentsecBin, "../cmd/agentsec")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building agentsec:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func requireNode(t *testing.T) {
	t.Helper()
	if agentsecBin == "" {
		t.Skip("needs the npm packages: run `npm ci` in e2e/ (.ci/run does)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("needs Node.js on PATH")
	}
}

func abs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// setup writes a signer key and a configuration for one upstream, served
// on a port the system chooses (serve says which), and returns the
// directory and the config path.
func setup(t *testing.T, rules, upstream string, calls int) (dir, cfg string) {
	t.Helper()
	return setupListening(t, rules, upstream, calls, "127.0.0.1:0")
}

// freeAddr returns a loopback address free when asked, for a test that
// must name the gateway's address before it starts (an OAuth provider's
// configuration): another process may take it meanwhile, a small risk
// the other tests avoid by listening on port 0.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// setupListening is setup, serving on addr.
func setupListening(t *testing.T, rules, upstream string, calls int, addr string) (dir, cfg string) {
	t.Helper()
	dir = t.TempDir()
	run(t, dir, agentsecBin, "keygen", "-name", "e2e")
	sum := sha256.Sum256([]byte("e2e-token"))
	config := fmt.Sprintf(`namespace: e2e
trust:
  rules:
%s
  agents:
    - {id: ts-client, level: verified, token_sha256: %x}
budget: {tokens: 10000000, calls: %d}
audit: {path: audit.db, key_file: e2e.key}
listen: %s
stdio_agent: ts-client
upstreams:
%s
`, rules, sum, calls, addr, upstream)
	cfg = filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, agentsecBin, "config", "check", cfg)
	return dir, cfg
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type step struct {
	Op        string         `json:"op"`
	Name      string         `json:"name,omitempty"`
	Arguments map[string]any `json:"arguments,omitempty"`
	Progress  bool           `json:"progress,omitempty"`
	URI       string         `json:"uri,omitempty"`
}

type seen struct {
	Op     string `json:"op"`
	Name   string `json:"name"`
	Error  string `json:"error"`
	Tools  []string
	Result struct {
		IsError bool `json:"isError"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	} `json:"result"`
	Progress  []float64 `json:"progress"`
	Resources []string  `json:"resources"`
	Contents  []struct {
		URI  string `json:"uri"`
		Text string `json:"text"`
	} `json:"contents"`
	Prompts  []string          `json:"prompts"`
	Messages []json.RawMessage `json:"messages"`
}

func (s seen) text() string {
	var b strings.Builder
	for _, c := range s.Result.Content {
		b.WriteString(c.Text)
	}
	return b.String()
}

// client runs the TypeScript SDK client with the steps against a gateway.
func client(t *testing.T, mode string, steps []step, target ...string) []seen {
	t.Helper()
	got, _ := clientAsked(t, mode, steps, target...)
	return got
}

// clientAsked is client, also returning how often the servers asked the
// client to sample, elicit and list its roots.
func clientAsked(t *testing.T, mode string, steps []step, target ...string) ([]seen, map[string]int) {
	t.Helper()
	stepsJSON, err := json.Marshal(steps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"client.mjs", mode, string(stepsJSON)}, target...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, stderr.String())
	}
	var res struct {
		Steps []seen         `json:"steps"`
		Asked map[string]int `json:"asked"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("client output %q: %v\n%s", out, err, stderr.String())
	}
	if len(res.Steps) != len(steps) {
		t.Fatalf("client ran %d of %d steps", len(res.Steps), len(steps))
	}
	return res.Steps, res.Asked
}

// serve starts agentsec serve and returns its URL and a function that
// stops it, as an operator would, with an interrupt.
func serve(t *testing.T, dir, cfg string) (string, func()) {
	t.Helper()
	cmd := exec.Command(agentsecBin, "serve", "-config", cfg)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	var logMu sync.Mutex
	t.Cleanup(func() {
		if t.Failed() {
			logMu.Lock()
			t.Logf("agentsec serve said:\n%s", log.String())
			logMu.Unlock()
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("agentsec serve did not stop on an interrupt")
		}
	}
	t.Cleanup(stop)
	started := make(chan string, 1)
	serving := regexp.MustCompile(`serving MCP on (http://\S+/)`)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := serving.FindStringSubmatch(sc.Text()); m != nil {
				started <- m[1]
			}
		}
	}()
	select {
	case url := <-started:
		return url, stop
	case <-time.After(30 * time.Second):
		t.Fatal("agentsec serve did not start")
		return "", nil
	}
}

const everythingRules = `    - {tool: echo, level: public}
    - {tool: trigger-long-running-operation, level: public}
    - {tool: get-env, level: privileged}`

func everythingUpstream(t *testing.T) string {
	return fmt.Sprintf("  - {name: everything, command: %q}", abs(t, "node_modules/.bin/mcp-server-everything"))
}

var everythingSteps = []step{
	{Op: "list-tools"},
	{Op: "call", Name: "echo", Arguments: map[string]any{"message": "hello through agentsec"}},
	{Op: "call", Name: "get-env"},
	{Op: "call", Name: "trigger-long-running-operation", Arguments: map[string]any{"duration": 1, "steps": 3}, Progress: true},
	{Op: "list-resources"},
	{Op: "read-resource", URI: "demo://resource/static/document/architecture.md"},
	{Op: "list-prompts"},
	{Op: "get-prompt", Name: "simple-prompt"},
	{Op: "call", Name: "echo", Arguments: map[string]any{"message": "third"}},
	{Op: "call", Name: "echo", Arguments: map[string]any{"message": "fourth"}},
}

func checkEverything(t *testing.T, got []seen, wantProgress bool) {
	t.Helper()
	for _, s := range got {
		if s.Error != "" && s.Op != "call" {
			t.Errorf("%s failed: %s", s.Op, s.Error)
		}
	}
	if !slices.Equal(got[0].Tools, []string{"echo", "trigger-long-running-operation"}) {
		t.Errorf("tools/list = %v, want echo and trigger-long-running-operation", got[0].Tools)
	}
	if got[1].Result.IsError || got[1].text() != "Echo: hello through agentsec" {
		t.Errorf("echo = %+v, want the server's own answer", got[1])
	}
	if !got[2].Result.IsError || !strings.Contains(got[2].text(), "assigned level is below the required level") {
		t.Errorf("get-env = %+v, want a trust denial", got[2])
	}
	if got[3].Result.IsError || !strings.Contains(got[3].text(), "Long running operation completed") {
		t.Errorf("long-running = %+v", got[3])
	}
	// The server sends its last progress just before its result. The
	// TypeScript SDK's client runs a notification's handler a microtask
	// later, but forgets the call's progress handler as soon as its
	// response is read (shared/protocol.js: _onnotification,
	// _onresponse): when both arrive in one read, the last progress is
	// dropped by the client, whatever relayed it. So the first two must
	// come, in order; the third may.
	if p := got[3].Progress; wantProgress && !slices.Equal(p, []float64{1, 2, 3}) && !slices.Equal(p, []float64{1, 2}) {
		t.Errorf("progress = %v, want 1, 2, 3 (or 1, 2: see above)", p)
	}
	if len(got[4].Resources) == 0 || len(got[5].Contents) != 1 || got[5].Contents[0].URI != "demo://resource/static/document/architecture.md" {
		t.Errorf("resources: list %v, read %+v", got[4].Resources, got[5].Contents)
	}
	if !slices.Contains(got[6].Prompts, "simple-prompt") || len(got[7].Messages) == 0 {
		t.Errorf("prompts: list %v, get %d messages", got[6].Prompts, len(got[7].Messages))
	}
	if got[8].Result.IsError {
		t.Errorf("third call = %+v, want allowed", got[8])
	}
	if !got[9].Result.IsError || !strings.Contains(got[9].text(), "call limit reached") {
		t.Errorf("fourth call = %+v, want the budget denial", got[9])
	}
}

func verifyLog(t *testing.T, dir string) {
	t.Helper()
	out := run(t, dir, agentsecBin, "audit", "verify", "-db", "audit.db", "-pubkey", "e2e.pub")
	if !strings.HasPrefix(out, "verified ") {
		t.Errorf("audit verify: %s", out)
	}
	calls := run(t, dir, agentsecBin, "audit", "query", "-db", "audit.db", "-event", "tool.call", "-format", "jsonl")
	if n := strings.Count(calls, "\n"); n != 5 {
		t.Errorf("%d tool.call records, want 5 (3 allowed, 2 denied):\n%s", n, calls)
	}
}

func TestEverythingOverStdio(t *testing.T) {
	requireNode(t)
	dir, cfg := setup(t, everythingRules, everythingUpstream(t), 3)
	got := client(t, "stdio", everythingSteps, agentsecBin, "proxy", "-config", cfg)
	checkEverything(t, got, true)
	verifyLog(t, dir)
}

func TestEverythingOverHTTP(t *testing.T) {
	requireNode(t)
	dir, cfg := setup(t, everythingRules, everythingUpstream(t), 3)
	url, stop := serve(t, dir, cfg)
	got := client(t, "http", everythingSteps, url, "e2e-token")
	checkEverything(t, got, true)
	// A wrong token gets nowhere.
	stepsJSON, _ := json.Marshal([]step{{Op: "list-tools"}})
	cmd := exec.Command("node", "client.mjs", "http", string(stepsJSON), url, "wrong-token")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a wrong token connected: %s", out)
	}
	stop() // a clean stop signs the final checkpoint
	verifyLog(t, dir)
}

// server-filesystem: reading is allowed, writing is not, and a denied
// write leaves the disk untouched.
func TestFilesystemOverStdio(t *testing.T) {
	requireNode(t)
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "notes.txt"), []byte("agentsec e2e"), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := `    - {tool: read_text_file, level: public}
    - {tool: list_directory, level: public}
    - {tool: write_file, level: privileged}`
	upstream := fmt.Sprintf("  - {name: fs, command: %q, args: [%q]}", abs(t, "node_modules/.bin/mcp-server-filesystem"), data)
	_, cfg := setup(t, rules, upstream, 100)
	got := client(t, "stdio", []step{
		{Op: "list-tools"},
		{Op: "call", Name: "read_text_file", Arguments: map[string]any{"path": filepath.Join(data, "notes.txt")}},
		{Op: "call", Name: "write_file", Arguments: map[string]any{"path": filepath.Join(data, "evil.txt"), "content": "x"}},
	}, agentsecBin, "proxy", "-config", cfg)
	if !slices.Equal(got[0].Tools, []string{"list_directory", "read_text_file"}) {
		t.Errorf("tools = %v", got[0].Tools)
	}
	if got[1].Result.IsError || !strings.Contains(got[1].text(), "agentsec e2e") {
		t.Errorf("read = %+v", got[1])
	}
	if !got[2].Result.IsError {
		t.Errorf("write = %+v, want denied", got[2])
	}
	if _, err := os.Stat(filepath.Join(data, "evil.txt")); err == nil {
		t.Error("the denied write reached the disk")
	}
}

// The servers' requests of the client during a call — sampling,
// elicitation, roots — cross the gateway both ways, over stdio and HTTP.
func TestEverythingAsksTheClient(t *testing.T) {
	requireNode(t)
	rules := `    - {tool: trigger-sampling-request, level: public}
    - {tool: trigger-elicitation-request, level: public}
    - {tool: get-roots-list, level: public}`
	steps := []step{
		{Op: "call", Name: "trigger-sampling-request", Arguments: map[string]any{"prompt": "hello", "maxTokens": 5}},
		{Op: "call", Name: "trigger-elicitation-request"},
		{Op: "call", Name: "get-roots-list"},
	}
	for _, mode := range []string{"stdio", "http"} {
		t.Run(mode, func(t *testing.T) {
			dir, cfg := setup(t, rules, everythingUpstream(t), 100)
			target := []string{agentsecBin, "proxy", "-config", cfg}
			var stop func()
			if mode == "http" {
				var url string
				url, stop = serve(t, dir, cfg)
				target = []string{url, "e2e-token"}
			}
			got, asked := clientAsked(t, mode, steps, target...)
			if got[0].Error != "" || got[0].Result.IsError || !strings.Contains(got[0].text(), "sampled: Resource trigger-sampling-request context: hello") {
				t.Errorf("sampling = %+v, want the client's sample in the server's answer", got[0])
			}
			if got[1].Error != "" || got[1].Result.IsError || !strings.Contains(got[1].text(), "User provided the requested information") || !strings.Contains(got[1].text(), "e2e") {
				t.Errorf("elicitation = %+v, want the client's answer in the server's", got[1])
			}
			if got[2].Error != "" || !strings.Contains(got[2].text(), "file:///e2e-root") {
				t.Errorf("roots = %+v, want the client's root", got[2])
			}
			if asked["sampling"] != 1 || asked["elicitation"] != 1 || asked["roots"] < 1 {
				t.Errorf("the client was asked %v, want one sampling, one elicitation and the roots", asked)
			}
			if stop != nil {
				stop()
			}
			out := run(t, dir, agentsecBin, "audit", "verify", "-db", "audit.db", "-pubkey", "e2e.pub")
			if !strings.HasPrefix(out, "verified ") {
				t.Errorf("audit verify: %s", out)
			}
		})
	}
}

// Both real servers behind one gateway: the client sees one server whose
// tools are named <upstream>__<tool>, and each call reaches its own.
func TestEverythingAndFilesystemTogether(t *testing.T) {
	requireNode(t)
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "notes.txt"), []byte("two servers, one gateway"), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := `    - {tool: "everything__echo", level: public}
    - {tool: "fs__read_*", level: public}
    - {tool: "fs__write_file", level: privileged}`
	upstreams := everythingUpstream(t) + "\n" +
		fmt.Sprintf("  - {name: fs, command: %q, args: [%q]}", abs(t, "node_modules/.bin/mcp-server-filesystem"), data)
	steps := []step{
		{Op: "list-tools"},
		{Op: "call", Name: "everything__echo", Arguments: map[string]any{"message": "to everything"}},
		{Op: "call", Name: "fs__read_text_file", Arguments: map[string]any{"path": filepath.Join(data, "notes.txt")}},
		{Op: "call", Name: "fs__write_file", Arguments: map[string]any{"path": filepath.Join(data, "evil.txt"), "content": "x"}},
		{Op: "list-resources"},
		{Op: "read-resource", URI: "demo://resource/static/document/architecture.md"},
		{Op: "list-prompts"},
		{Op: "get-prompt", Name: "everything__simple-prompt"},
	}
	for _, mode := range []string{"stdio", "http"} {
		t.Run(mode, func(t *testing.T) {
			dir, cfg := setup(t, rules, upstreams, 100)
			target := []string{agentsecBin, "proxy", "-config", cfg}
			if mode == "http" {
				url, stop := serve(t, dir, cfg)
				defer stop()
				target = []string{url, "e2e-token"}
			}
			got := client(t, mode, steps, target...)
			if !slices.Equal(got[0].Tools, []string{"everything__echo", "fs__read_media_file", "fs__read_multiple_files", "fs__read_text_file"}) &&
				!slices.Equal(got[0].Tools, []string{"everything__echo", "fs__read_file", "fs__read_media_file", "fs__read_multiple_files", "fs__read_text_file"}) {
				t.Errorf("tools = %v, want each server's allowed tools under its prefix", got[0].Tools)
			}
			if got[1].Result.IsError || got[1].text() != "Echo: to everything" {
				t.Errorf("everything__echo = %+v", got[1])
			}
			if got[2].Result.IsError || !strings.Contains(got[2].text(), "two servers, one gateway") {
				t.Errorf("fs__read_text_file = %+v", got[2])
			}
			if !got[3].Result.IsError || !strings.Contains(got[3].text(), "below the required level") {
				t.Errorf("fs__write_file = %+v, want denied", got[3])
			}
			if _, err := os.Stat(filepath.Join(data, "evil.txt")); err == nil {
				t.Error("the denied write reached the disk")
			}
			if len(got[4].Resources) == 0 || len(got[5].Contents) != 1 {
				t.Errorf("resources: list %v, read %+v", got[4].Resources, got[5].Contents)
			}
			if !slices.Contains(got[6].Prompts, "everything__simple-prompt") || len(got[7].Messages) == 0 {
				t.Errorf("prompts: list %v, get %+v", got[6].Prompts, got[7])
			}
		})
	}
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// The Go SDK's client against server-everything, through agentsec serve
// and through agentsec proxy.
func TestEverythingWithTheGoClient(t *testing.T) {
	requireNode(t)
	dir, cfg := setup(t, everythingRules, everythingUpstream(t), 3)
	url, stop := serve(t, dir, cfg)
	stdioDir, stdioCfg := setup(t, everythingRules, everythingUpstream(t), 3)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		transport mcp.Transport
	}{
		{"http", &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: bearer{"e2e-token"}}, MaxRetries: -1}},
		// A log has one writer: the proxy keeps its own, beside another copy of the configuration.
		{"stdio", &mcp.CommandTransport{Command: exec.Command(agentsecBin, "proxy", "-config", stdioCfg)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "go-e2e", Version: "1"}, nil).Connect(ctx, tc.transport, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			tools, err := cs.ListTools(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tool := range tools.Tools {
				names = append(names, tool.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, []string{"echo", "trigger-long-running-operation"}) {
				t.Errorf("tools = %v", names)
			}
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "from Go"}})
			if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "Echo: from Go" {
				t.Errorf("echo = %+v, %v", res, err)
			}
			res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "get-env"})
			if err != nil || !res.IsError {
				t.Errorf("get-env = %+v, %v; want denied", res, err)
			}
		})
	}
	stop()
	for _, d := range []string{dir, stdioDir} {
		out := run(t, d, agentsecBin, "audit", "verify", "-db", "audit.db", "-pubkey", "e2e.pub")
		if !strings.HasPrefix(out, "verified ") {
			t.Errorf("audit verify: %s", out)
		}
	}
}

// startProvider starts the OpenID provider of op.mjs for resource, with
// these machine clients (id: secret), and returns its issuer. With
// "opaque" among args, its access tokens are opaque.
func startProvider(t *testing.T, resource string, clients map[string]string, args ...string) string {
	t.Helper()
	var list [][2]string
	for id, secret := range clients {
		list = append(list, [2]string{id, secret})
	}
	clientsJSON, _ := json.Marshal(list)
	cmd := exec.Command("node", append([]string{"op.mjs", resource, string(clientsJSON)}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("the OpenID provider said:\n%s", stderr.String())
		}
	})
	issuer := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if url, ok := strings.CutPrefix(sc.Text(), "issuer "); ok {
				issuer <- url
			}
		}
	}()
	select {
	case url := <-issuer:
		return url
	case <-time.After(30 * time.Second):
		t.Fatalf("the OpenID provider did not start: %s", stderr.String())
		return ""
	}
}

// oauthConfig appends an auth.oauth section to the configuration file:
// the provider at issuer, its clients named by client_id and mapped by
// agents, requiring mcp:tools; extra adds keys to the issuer.
func oauthConfig(t *testing.T, cfg, endpoint, issuer, agents, extra string) {
	t.Helper()
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, `auth:
  oauth:
    audience: %s
    issuers:
      - issuer: %s
        scopes: [mcp:tools]
        agent_claim: client_id
        agents: %s
%s`, endpoint, issuer, agents, extra)
}

// goOAuthClient connects the Go SDK's client-credentials client, holding
// only a client id and secret, to endpoint.
func goOAuthClient(t *testing.T, endpoint, issuer, id, secret string) *mcp.ClientSession {
	t.Helper()
	handler, err := extauth.NewClientCredentialsHandler(&extauth.ClientCredentialsHandlerConfig{
		Credentials: &oauthex.ClientCredentials{ClientID: id, Issuer: issuer, ClientSecretAuth: &oauthex.ClientSecretAuth{ClientSecret: secret}}})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "go-e2e", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: endpoint, OAuthHandler: handler, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// exportedRecord is a record as agentsec audit export prints it.
type exportedRecord struct {
	Agent string            `json:"agent"`
	Attrs map[string]string `json:"attrs"`
}

// toolCallRecords exports the log's tool.call records.
func toolCallRecords(t *testing.T, dir string) []exportedRecord {
	t.Helper()
	var out []exportedRecord
	for line := range strings.Lines(run(t, dir, agentsecBin, "audit", "export", "-db", "audit.db", "-event", "tool.call")) {
		var exported struct {
			Record exportedRecord `json:"record"`
		}
		if err := json.Unmarshal([]byte(line), &exported); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		out = append(out, exported.Record)
	}
	return out
}

// TestOAuthWithBothSDKs: agentsec serve as an OAuth resource server in
// front of server-everything, with a real OpenID provider on loopback
// (oidc-provider, op.mjs). The TypeScript SDK's and the Go SDK's
// client-credentials clients, given only a client id and secret, find the
// protected-resource metadata from the gateway's 401, get a token from
// the provider for the gateway (RFC 8707), and call tools as the agent
// the operator mapped their client to, at the level the operator
// assigned: echo is allowed, get-env denied. Each call's record names the
// client and its token, and the log verifies.
func TestOAuthWithBothSDKs(t *testing.T) {
	requireNode(t)
	addr := freeAddr(t)
	dir, cfg := setupListening(t, everythingRules, everythingUpstream(t), 10, addr)
	endpoint := "http://" + addr + "/mcp"
	issuer := startProvider(t, endpoint, map[string]string{"svc-ts": "ts-secret", "svc-go": "go-secret"})
	oauthConfig(t, cfg, endpoint, issuer, "{svc-ts: ts-client, svc-go: ts-client}", "")
	run(t, dir, agentsecBin, "config", "check", cfg)
	_, stop := serve(t, dir, cfg)

	steps := []step{
		{Op: "call", Name: "echo", Arguments: map[string]any{"message": "signed in"}},
		{Op: "call", Name: "get-env"},
	}
	got := client(t, "oauth", steps, endpoint, "svc-ts", "ts-secret", issuer, "mcp:tools")
	if got[0].Error != "" || got[0].Result.IsError || got[0].text() != "Echo: signed in" {
		t.Errorf("TypeScript echo: %+v", got[0])
	}
	if !got[1].Result.IsError {
		t.Errorf("TypeScript get-env was not denied: %+v", got[1])
	}

	ctx := context.Background()
	cs := goOAuthClient(t, endpoint, issuer, "svc-go", "go-secret")
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "from Go"}})
	if err != nil || res.IsError {
		t.Errorf("Go echo: %+v %v", res, err)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "get-env"})
	if err != nil || !res.IsError {
		t.Errorf("Go get-env: %+v %v; want denied", res, err)
	}
	cs.Close()
	stop()

	out := run(t, dir, agentsecBin, "audit", "verify", "-db", "audit.db", "-pubkey", "e2e.pub")
	if !strings.HasPrefix(out, "verified ") {
		t.Errorf("audit verify: %s", out)
	}
	var clients []string
	for _, rec := range toolCallRecords(t, dir) {
		if rec.Agent != "ts-client" || rec.Attrs["oauth_issuer"] != issuer || rec.Attrs["oauth_token_id"] == "" {
			t.Errorf("record %+v", rec)
		}
		clients = append(clients, rec.Attrs["oauth_client_id"])
	}
	if !slices.Equal(clients, []string{"svc-ts", "svc-ts", "svc-go", "svc-go"}) {
		t.Errorf("the records' clients: %v", clients)
	}
}

// TestOAuthOpaqueTokensFromARealProvider: the provider issues opaque
// tokens, which the gateway has it introspect (RFC 7662): the Go SDK's
// client-credentials client calls tools with them as its mapped agent,
// each call recorded with the token named by its hash; a token its client
// revokes at the provider (RFC 7009) is refused once the answer's cache
// time has passed.
func TestOAuthOpaqueTokensFromARealProvider(t *testing.T) {
	requireNode(t)
	addr := freeAddr(t)
	dir, cfg := setupListening(t, everythingRules, everythingUpstream(t), 10, addr)
	endpoint := "http://" + addr + "/mcp"
	issuer := startProvider(t, endpoint, map[string]string{"svc-go": "go-secret"}, "opaque")
	if err := os.WriteFile(filepath.Join(dir, "introspection.secret"), []byte("introspection-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oauthConfig(t, cfg, endpoint, issuer, "{svc-go: ts-client}",
		"        introspection: {client_id: agentsec-gateway, client_secret_file: introspection.secret, opaque_tokens: true, cache: 1s}\n")
	run(t, dir, agentsecBin, "config", "check", cfg)
	_, stop := serve(t, dir, cfg)

	ctx := context.Background()
	cs := goOAuthClient(t, endpoint, issuer, "svc-go", "go-secret")
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "opaque"}}); err != nil || res.IsError {
		t.Errorf("echo with an opaque token: %+v %v", res, err)
	}
	cs.Close()

	// A token got by hand, used, revoked by its client, refused.
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"mcp:tools"}, "resource": {endpoint}}
	req, _ := http.NewRequest(http.MethodPost, issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("svc-go", "go-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	initialize := func() int {
		req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+got.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got.AccessToken == "" || strings.Count(got.AccessToken, ".") == 2 {
		t.Fatalf("the provider's token %q is not opaque", got.AccessToken)
	}
	if status := initialize(); status != http.StatusOK {
		t.Fatalf("initialize with the token: %d", status)
	}
	req, _ = http.NewRequest(http.MethodPost, issuer+"/token/revocation", strings.NewReader(url.Values{"token": {got.AccessToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("svc-go", "go-secret")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("revoking: %v %v", resp, err)
	}
	time.Sleep(1100 * time.Millisecond) // the answer's cache time
	if status := initialize(); status != http.StatusUnauthorized {
		t.Errorf("initialize with the revoked token: %d, want 401", status)
	}
	stop()

	records := toolCallRecords(t, dir)
	for _, rec := range records {
		if rec.Agent != "ts-client" || rec.Attrs["oauth_client_id"] != "svc-go" || !strings.HasPrefix(rec.Attrs["oauth_token_id"], "sha256:") {
			t.Errorf("record %+v", rec)
		}
	}
	if len(records) != 1 {
		t.Errorf("%d tool.call records, want 1", len(records))
	}
}
