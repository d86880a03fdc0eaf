//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const token = "bench-token"

// serveUpstream serves an MCP server with one no-op tool over streamable
// HTTP on loopback, prints its URL and serves until killed.
func serveUpstream() {
	server := mcp.NewServer(&mcp.Implementation{Name: "noop", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "noop", Description: "does nothing"},
		func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	serve(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
}

// serveProxy serves a bare httputil.ReverseProxy in front of target: the
// floor of any HTTP hop between a client and an MCP server.
func serveProxy(target string) {
	u, err := url.Parse(target)
	if err != nil {
		log.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	proxy.FlushInterval = -1 // pass event streams through as they come, as the gateway does
	serve(proxy)
}

// serve serves h on a loopback port, prints its URL and serves until
// killed.
func serve(h http.Handler) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("http://%s/\n", ln.Addr())
	log.Fatal(http.Serve(ln, h))
}

// startChild runs this program with args as a server and returns it and
// the URL it prints.
func startChild(args ...string) (*os.Process, string) {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = diesWithUs()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	url, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		log.Fatalf("%v did not start: %v", args, err)
	}
	return cmd.Process, strings.TrimSpace(url)
}

// buildAgentsec builds agentsec from this checkout into dir.
func buildAgentsec(dir string) string {
	bin := filepath.Join(dir, "agentsec")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/agentsec").CombinedOutput(); err != nil {
		log.Fatalf("building agentsec (run from the repository's root): %v\n%s", err, out)
	}
	return bin
}

// A gateway is a running `agentsec serve` with a durable signed audit log.
type gateway struct {
	bin, dir string
	url      string
	proc     *os.Process // the gateway itself, even when it runs under strace
	cmd      *exec.Cmd
	trace    string // the strace output file, if it runs under strace
}

// startGateway runs `agentsec serve` from bin in front of upstream, with a
// signing key, a configuration and its audit log in dir. With trace set
// it runs under strace, which writes every call the gateway makes that
// may sync a file (syncTrace), and only those, to dir/syncs.
func startGateway(bin, dir, upstream string, trace bool) *gateway {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}
	if out, err := exec.Command(bin, "keygen", "-name", "bench", "-dir", dir).CombinedOutput(); err != nil {
		log.Fatalf("agentsec keygen: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "agentsec.yaml")
	config := fmt.Sprintf(`namespace: bench
trust:
  rules: [{tool: noop, level: public}]
  agents: [{id: bench, level: public, token_sha256: %x}]
budget: {tokens: 1000000000000, calls: 1000000000000}
audit: {path: audit.db, key_file: bench.key}
listen: 127.0.0.1:0
max_sessions: 100000
upstreams: [{name: noop, url: %q}]
`, sha256.Sum256([]byte(token)), upstream)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		log.Fatal(err)
	}
	g := &gateway{bin: bin, dir: dir}
	args := []string{"serve", "-config", cfg}
	if trace {
		g.trace = filepath.Join(dir, "syncs")
		// --seccomp-bpf stops the gateway only at the traced calls, so
		// it runs at nearly full speed in between.
		args = append([]string{"-f", "-qq", "--seccomp-bpf", "-s", "0", "-e", "trace=" + syncTrace, "-e", "signal=none", "-o", g.trace, bin}, args...)
		g.cmd = exec.Command("strace", args...)
	} else {
		g.cmd = exec.Command(bin, args...)
	}
	g.cmd.Dir = dir
	g.cmd.SysProcAttr = diesWithUs()
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		log.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		// "agentsec: serving MCP on http://127.0.0.1:port/ in front of noop"
		if _, rest, ok := strings.Cut(lines.Text(), "serving MCP on "); ok {
			g.url, _, _ = strings.Cut(rest, " ")
			break
		}
	}
	if g.url == "" {
		log.Fatalf("agentsec serve did not start: %v", g.cmd.Wait())
	}
	go func() {
		for lines.Scan() {
			fmt.Fprintln(os.Stderr, "agentsec serve:", lines.Text())
		}
	}()
	g.proc = g.cmd.Process
	if trace {
		g.proc = tracee(g.cmd.Process.Pid)
	}
	return g
}

// tracee finds the one child of strace's process pid.
func tracee(pid int) *os.Process {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		log.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		log.Fatalf("strace has no one child: %q", data)
	}
	p, _ := os.FindProcess(child)
	return p
}

// stop interrupts the gateway, as an operator would, and checks that its
// log verifies.
func (g *gateway) stop() {
	g.proc.Signal(os.Interrupt)
	g.cmd.Wait()
	out, err := exec.Command(g.bin, "audit", "verify", "-db", filepath.Join(g.dir, "audit.db"), "-pubkey", filepath.Join(g.dir, "bench.pub")).CombinedOutput()
	if err != nil {
		log.Printf("the audit log in %s does not verify: %v\n%s", g.dir, err, out)
	}
}

// diesWithUs has a child killed when this process ends, even by
// log.Fatal, which runs no deferred kills.
func diesWithUs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
