package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/store/sqlite"
)

// stubbornServerEnv makes the test binary an upstream MCP server that
// outlives its closed stdin and ignores SIGTERM, as a badly written server
// does: only SIGKILL ends it. The variable names a file it appends its
// process id to, so that a test can kill what a crashed gateway left
// behind; its tool block writes the file "<name>.pid" and never answers,
// even when the gateway goes away.
const stubbornServerEnv = "AGENTSEC_TEST_STUBBORN_SERVER"

// init, not TestMain, starts the stubborn server: TestMain belongs to the
// scripts' file, and init runs before it.
func init() {
	if os.Getenv(stubbornServerEnv) != "" {
		runStubbornServer(os.Getenv(stubbornServerEnv))
	}
}

func runStubbornServer(file string) {
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
	if f, err := os.OpenFile(file+".pids", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		fmt.Fprintln(f, os.Getpid())
		f.Close()
	}
	server := mcp.NewServer(&mcp.Implementation{Name: "stubborn", Version: "1"}, nil)
	echo := func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + in.Text}}}, nil, nil
	}
	mcp.AddTool(server, &mcp.Tool{Name: "read", Description: "echo"}, echo)
	mcp.AddTool(server, &mcp.Tool{Name: "admin", Description: "echo"}, echo)
	mcp.AddTool(server, &mcp.Tool{Name: "block", Description: "never answers"},
		func(context.Context, *mcp.CallToolRequest, echoArgs) (*mcp.CallToolResult, any, error) {
			_ = os.WriteFile(file+".pid", []byte(fmt.Sprint(os.Getpid())), 0o600)
			time.Sleep(time.Hour)
			return nil, nil, nil
		})
	_ = server.Run(context.Background(), &mcp.StdioTransport{})
	time.Sleep(time.Hour)
	os.Exit(0)
}

// stopBound is how long agentsec proxy and agentsec serve may take to
// exit after SIGTERM or SIGINT, as docs/cli.md states it.
const stopBound = stopTimeout

// A gatewayProcess is "agentsec proxy" or "agentsec serve" run as a
// process of its own, in front of the echo server or the stubborn one,
// with a SQLite audit log whose checkpoints only Close signs.
type gatewayProcess struct {
	t       *testing.T
	dir     string
	cmd     *exec.Cmd
	stderr  syncbuf.Buffer
	exited  chan struct{}
	calls   string // the upstream's calls file
	session *mcp.ClientSession
}

const shutdownToken = "ags_shutdown-test"

func startGatewayProcess(t *testing.T, command string, stubborn bool) *gatewayProcess {
	t.Helper()
	if _, err := exec.LookPath("agentsec"); err != nil {
		t.Fatalf("the test binary's agentsec command is not on PATH: %v", err)
	}
	g := &gatewayProcess{t: t, dir: t.TempDir(), exited: make(chan struct{})}
	g.calls = filepath.Join(g.dir, "calls")
	skey, vkey, err := audit.GenerateKey("shutdown-test")
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]string{"gw.key": skey, "gw.pub": vkey} {
		if err := os.WriteFile(filepath.Join(g.dir, name), []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := echoServerEnv
	if stubborn {
		env = stubbornServerEnv
	}
	// checkpoint_interval: an hour, so that only the final checkpoint,
	// the one the drain signs, can cover the calls.
	cfg := fmt.Sprintf(`namespace: shutdown-test
trust:
  rules: [{tool: read, level: public}, {tool: block, level: public}, {tool: admin, level: privileged}]
  agents: [{id: bot, level: public, token_sha256: %x}]
budget: {tokens: 1000000, calls: 100}
audit: {path: audit.db, key_file: gw.key, checkpoint_interval: 1h}
listen: 127.0.0.1:0
stdio_agent: bot
upstreams:
  - {name: up, command: %q, env: {%s: %q}}
`, sha256.Sum256([]byte(shutdownToken)), os.Args[0], env, g.calls)
	cfgPath := filepath.Join(g.dir, "agentsec.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.cleanup)

	g.cmd = exec.Command("agentsec", command, "-config", cfgPath)
	g.cmd.Dir = g.dir
	// Stderr is a pipe of the test's own, not StderrPipe: the upstream
	// inherits it, and a stubborn one holds it open after the gateway
	// has exited.
	stderr, stderrW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stderrW.Close()
	g.cmd.Stderr = stderrW
	var transport mcp.Transport
	if command == "proxy" {
		stdin, err := g.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := g.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		transport = &mcp.IOTransport{Reader: stdout, Writer: stdin}
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		g.cmd.Wait()
		close(g.exited)
	}()
	endpoint := make(chan string, 1)
	go func() {
		defer stderr.Close()
		addr := regexp.MustCompile(`serving MCP on (http://\S+)`)
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			fmt.Fprintln(&g.stderr, lines.Text())
			if m := addr.FindStringSubmatch(lines.Text()); m != nil {
				endpoint <- m[1]
			}
		}
	}()
	if command == "serve" {
		select {
		case u := <-endpoint:
			transport = &mcp.StreamableClientTransport{Endpoint: u,
				HTTPClient: &http.Client{Transport: bearerTransport{shutdownToken}}, MaxRetries: -1}
		case <-g.exited:
			t.Fatalf("agentsec serve exited before serving: %s", g.stderr.String())
		case <-time.After(30 * time.Second):
			t.Fatalf("agentsec serve did not start serving: %s", g.stderr.String())
		}
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "shutdown-test", Version: "1"}, nil)
	g.session, err = client.Connect(context.Background(), transport, nil)
	if err != nil {
		t.Fatalf("connect to agentsec %s: %v (stderr: %s)", command, err, g.stderr.String())
	}
	return g
}

// cleanup kills what is left: the gateway, when a test failed, and the
// stubborn servers, which a gateway killed outright leaves behind.
func (g *gatewayProcess) cleanup() {
	if g.cmd.Process != nil {
		select {
		case <-g.exited:
		default:
			g.cmd.Process.Kill()
			<-g.exited
		}
	}
	for _, pid := range g.upstreamPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// callsAndOneInFlight makes allowed and denied calls, then starts a call
// the upstream never answers and waits until the upstream has it.
func (g *gatewayProcess) callsAndOneInFlight() {
	g.t.Helper()
	ctx := context.Background()
	for i, tool := range []string{"read", "read", "admin", "read"} {
		res, err := g.session.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"text": fmt.Sprint(i)}})
		if err != nil {
			g.t.Fatalf("call %d (%s): %v (stderr: %s)", i, tool, err, g.stderr.String())
		}
		if res.IsError != (tool == "admin") {
			g.t.Fatalf("call %d (%s) = %+v", i, tool, res)
		}
	}
	go g.session.CallTool(ctx, &mcp.CallToolParams{Name: "block", Arguments: map[string]any{"text": "x"}})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(g.calls + ".pid"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("the blocking call never reached the upstream (stderr: %s)", g.stderr.String())
		}
	}
}

// signal sends sig to the gateway.
func (g *gatewayProcess) signal(sig os.Signal) {
	g.t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		g.t.Fatal(err)
	}
}

// wait waits at most limit for the gateway to exit, and returns how long
// it took and its exit code.
func (g *gatewayProcess) wait(limit time.Duration) (time.Duration, int) {
	g.t.Helper()
	start := time.Now()
	select {
	case <-g.exited:
	case <-time.After(limit):
		g.t.Fatalf("agentsec still runs %v after the signal (stderr: %s)", limit, g.stderr.String())
	}
	took := time.Since(start)
	code := g.cmd.ProcessState.ExitCode()
	if code == -1 {
		g.t.Logf("agentsec was killed: %v", g.cmd.ProcessState)
	}
	return took, code
}

// upstreamPIDs returns the process ids of the upstream servers the
// gateway started: the one that took the blocking call, and every
// stubborn one.
func (g *gatewayProcess) upstreamPIDs() []int {
	var pids []int
	for _, file := range []string{g.calls + ".pid", g.calls + ".pids"} {
		data, _ := os.ReadFile(file)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// checkUpstreamsGone checks that no upstream server outlives the gateway:
// a zombie, exited but not yet reaped by whoever inherited it, counts as
// gone.
func (g *gatewayProcess) checkUpstreamsGone() {
	g.t.Helper()
	for _, pid := range g.upstreamPIDs() {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// The state follows the command, which is in parentheses.
		if i := strings.LastIndexByte(string(stat), ')'); err == nil && i >= 0 && !strings.HasPrefix(string(stat[i:]), ") Z") {
			g.t.Errorf("upstream server %d still runs after the gateway exited: %s", pid, stat)
		}
	}
}

// verifyCovered runs agentsec audit verify on the log and checks that a
// signed checkpoint covers every record.
func (g *gatewayProcess) verifyCovered() {
	g.t.Helper()
	out, err := exec.Command("agentsec", "audit", "verify",
		"-db", filepath.Join(g.dir, "audit.db"), "-pubkey", filepath.Join(g.dir, "gw.pub")).CombinedOutput()
	if err != nil {
		g.t.Fatalf("agentsec audit verify: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`^verified (\d+) records: .*(?:covering|the latest covers) (\d+) records\n$`).FindSubmatch(out)
	if m == nil || string(m[1]) != string(m[2]) {
		g.t.Fatalf("agentsec audit verify: %s; want the latest checkpoint to cover every record", out)
	}
	// The call in flight is recorded too: it was sent, so it is spent.
	st, err := sqlite.Open(context.Background(), filepath.Join(g.dir, "audit.db"), sqlite.Options{ReadOnly: true})
	if err != nil {
		g.t.Fatal(err)
	}
	defer st.Close()
	page, err := audit.Query(context.Background(), st, audit.Filter{Event: "tool.call"})
	if err != nil || len(page.Records) != 5 {
		g.t.Fatalf("the log holds %d tool calls (%v), want 5: %+v", len(page.Records), err, page.Records)
	}
	if last := page.Records[4]; last.Tool != "block" || !strings.Contains(last.Reason, "sent, then") {
		g.t.Errorf("the call in flight is recorded as %+v, want block, sent then failed", last)
	}
}

// SIGTERM, as systemd, Docker and Kubernetes send it, stops the gateway
// as SIGINT does: the calls in flight end, the last checkpoint is signed
// and the process exits 0 within stopBound — also when the upstream
// outlives its closed stdin and ignores SIGTERM.
func TestGatewayStopsOnSIGTERM(t *testing.T) {
	for _, command := range []string{"proxy", "serve"} {
		for _, stubborn := range []bool{false, true} {
			name := command + "/echo"
			if stubborn {
				name = command + "/stubborn"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				g := startGatewayProcess(t, command, stubborn)
				g.callsAndOneInFlight()
				g.signal(syscall.SIGTERM)
				took, code := g.wait(stopBound + 5*time.Second)
				if code != 0 || took > stopBound {
					t.Fatalf("agentsec %s exited %d %v after SIGTERM, want 0 within %v (stderr: %s)",
						command, code, took.Round(time.Millisecond), stopBound, g.stderr.String())
				}
				t.Logf("agentsec %s stopped %v after SIGTERM", command, took.Round(time.Millisecond))
				g.checkUpstreamsGone()
				g.verifyCovered()
			})
		}
	}
}

// A second signal during the drain stops the process at once, with
// exit code 1 and a message saying what was skipped.
func TestGatewaySecondSignalExitsAtOnce(t *testing.T) {
	g := startGatewayProcess(t, "proxy", true)
	g.callsAndOneInFlight()
	g.signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond) // the stubborn upstream holds the drain for 2s
	g.signal(os.Interrupt)
	took, code := g.wait(stopBound)
	if code != 1 || took > time.Second {
		t.Fatalf("agentsec proxy exited %d %v after the second signal, want 1 at once (stderr: %s)",
			code, took.Round(time.Millisecond), g.stderr.String())
	}
	if !strings.Contains(g.stderr.String(), "agentsec: SIGINT during shutdown: exiting at once") {
		t.Errorf("stderr lacks the message for the second signal:\n%s", g.stderr.String())
	}
}
