// Command gateway measures what the agentsec gateway adds to a tools/call
// over streamable HTTP: the same no-op tool is called straight on an MCP
// server and through `agentsec serve` in front of it, with the durable
// SQLite audit log on, at fixed offered rates and at saturation.
//
// Three processes, as in production, all on loopback: this one is the
// client (the Go SDK's), a child of it is the MCP server (the Go SDK's),
// and the gateway is the real agentsec binary, built from this checkout
// and run with a configuration file. Each process's CPU time per call is
// read from /proc, so the gateway's own cost is measured, not inferred.
//
//	go run ./bench/gateway                 # defaults: rates 500 and 2000/s, 10 s each
//	go run ./bench/gateway -duration 5s -rates 500,2000 -sessions 16
//
// Latency is measured from each call's scheduled start, so a stalled call
// delays the ones behind it in the measurement too (no coordinated
// omission). Before the measurements it times fdatasync on the audit
// log's disk, the floor under any durable append.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const token = "bench-token"

func main() {
	duration := flag.Duration("duration", 10*time.Second, "how long each measurement runs")
	ratesFlag := flag.String("rates", "500,2000", "offered rates in calls per second, comma-separated")
	sessions := flag.Int("sessions", 16, "client sessions the calls are spread over")
	upstreamOnly := flag.Bool("upstream", false, "serve the no-op MCP server and print its URL (the benchmark's child)")
	flag.Parse()
	if *upstreamOnly {
		serveUpstream()
		return
	}
	var rates []int
	for _, f := range strings.Split(*ratesFlag, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			log.Fatalf("bad rate %q", f)
		}
		rates = append(rates, r)
	}
	dir, err := os.MkdirTemp("", "agentsec-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	upstream, upstreamURL := startUpstream()
	defer upstream.Process.Kill()
	gateway, gatewayURL, stopGateway := startGateway(dir, upstreamURL)
	defer stopGateway()

	direct := connectAll(upstreamURL, "", *sessions)
	gated := connectAll(gatewayURL, token, *sessions)
	procs := []*os.Process{upstream.Process, gateway}

	fsync := fdatasyncP50(dir)
	fmt.Printf("# agentsec gateway benchmark: %d sessions, %v per measurement, durable SQLite audit\n", *sessions, *duration)
	fmt.Printf("# fdatasync on the audit log's disk, same run: p50 %v\n\n", fsync.Round(time.Microsecond))
	fmt.Println("| load | path | calls/s | p50 | p99 | CPU/call: client | server | gateway | errors |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, rate := range rates {
		d := measure(procs, func() *result { return fixedRate(direct, rate, *duration) })
		g := measure(procs, func() *result { return fixedRate(gated, rate, *duration) })
		row("offered "+strconv.Itoa(rate)+"/s", "direct", d)
		row("offered "+strconv.Itoa(rate)+"/s", "gateway", g)
		fmt.Printf("| offered %d/s | **added** | | **%v** | **%v** | | | | |\n", rate,
			(g.pct(50) - d.pct(50)).Round(time.Microsecond), (g.pct(99) - d.pct(99)).Round(time.Microsecond))
	}
	d := measure(procs, func() *result { return saturate(direct, *duration) })
	g := measure(procs, func() *result { return saturate(gated, *duration) })
	row("saturation", "direct", d)
	row("saturation", "gateway", g)
	fmt.Printf("| saturation | **gateway/direct** | **%.0f%%** | | | | | | |\n", 100*g.rate()/d.rate())
}

type result struct {
	lat     []time.Duration
	errors  int64
	elapsed time.Duration
	cpu     [3]time.Duration // CPU time of the client, the server and the gateway during the measurement
}

func (r *result) pct(p int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	return r.lat[min(len(r.lat)-1, len(r.lat)*p/100)]
}

func (r *result) rate() float64 { return float64(len(r.lat)) / r.elapsed.Seconds() }

func (r *result) perCall(i int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return (r.cpu[i] / time.Duration(len(r.lat))).Round(time.Microsecond)
}

func row(load, path string, r *result) {
	gateway := "–"
	if path == "gateway" {
		gateway = r.perCall(2).String()
	}
	fmt.Printf("| %s | %s | %.0f | %v | %v | %v | %v | %s | %d |\n", load, path, r.rate(),
		r.pct(50).Round(time.Microsecond), r.pct(99).Round(time.Microsecond), r.perCall(0), r.perCall(1), gateway, r.errors)
}

// measure runs f and adds the CPU time each process spent meanwhile.
func measure(procs []*os.Process, f func() *result) *result {
	before := cpuTimes(procs)
	r := f()
	after := cpuTimes(procs)
	for i := range r.cpu {
		r.cpu[i] = after[i] - before[i]
	}
	return r
}

// cpuTimes is the CPU time used so far by this process and each of procs.
func cpuTimes(procs []*os.Process) [3]time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	out := [3]time.Duration{time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	for i, p := range procs {
		out[i+1] = procCPU(p.Pid)
	}
	return out
}

// procCPU reads a process's user and system time from /proc.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command, which is in parentheses and may hold
	// spaces: utime and stime are the 12th and 13th of them.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

func call(cs *mcp.ClientSession) error {
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "noop", Arguments: map[string]any{}})
	if err == nil && res.IsError {
		err = fmt.Errorf("tool error")
	}
	return err
}

// fixedRate offers calls at rate per second, spread over the sessions in
// turn, each at its scheduled time.
func fixedRate(sessions []*mcp.ClientSession, rate int, d time.Duration) *result {
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	res := &result{lat: make([]time.Duration, 0, n)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Go(func() {
			err := call(sessions[i%len(sessions)])
			lat := time.Since(due)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.errors++
				return
			}
			res.lat = append(res.lat, lat)
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// saturate calls as fast as each session can, all at once.
func saturate(sessions []*mcp.ClientSession, d time.Duration) *result {
	res := &result{}
	var mu sync.Mutex
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for _, cs := range sessions {
		for range 4 { // a few calls in flight per session
			wg.Go(func() {
				var mine []time.Duration
				for time.Now().Before(stop) {
					t0 := time.Now()
					if err := call(cs); err != nil {
						errs.Add(1)
						continue
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				res.lat = append(res.lat, mine...)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.errors = errs.Load()
	return res
}

// serveUpstream serves an MCP server with one no-op tool over streamable
// HTTP on loopback, prints its URL and serves until killed.
func serveUpstream() {
	server := mcp.NewServer(&mcp.Implementation{Name: "noop", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "noop", Description: "does nothing"},
		func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("http://%s/\n", ln.Addr())
	log.Fatal(http.Serve(ln, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)))
}

// startUpstream runs this program as the MCP server and returns it and
// its URL.
func startUpstream() (*exec.Cmd, string) {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-upstream")
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
		log.Fatalf("the upstream did not start: %v", err)
	}
	return cmd, strings.TrimSpace(url)
}

// startGateway builds agentsec from this checkout and runs `agentsec
// serve` in front of upstream, with a signing key and a durable audit log
// in dir. It returns the process, its URL, and a function that stops it
// (with an interrupt, as an operator would) and checks the log verifies.
func startGateway(dir, upstream string) (*os.Process, string, func()) {
	bin := filepath.Join(dir, "agentsec")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/agentsec").CombinedOutput(); err != nil {
		log.Fatalf("building agentsec (run from the repository's root): %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "keygen", "-name", "bench", "-dir", dir).CombinedOutput(); err != nil {
		log.Fatalf("agentsec keygen: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "agentsec.yaml")
	config := fmt.Sprintf(`namespace: bench
trust:
  rules: [{tool: noop, level: public}]
  agents: [{id: bench, level: public, token_sha256: %x}]
budget: {tokens: 1000000000000, calls: 1000000000000}
audit: {path: audit.db, key_file: bench.key}
listen: %s
max_sessions: 100000
upstreams: [{name: noop, url: %q}]
`, sha256.Sum256([]byte(token)), addr, upstream)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-config", cfg)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		if strings.Contains(lines.Text(), "serving MCP on") {
			break
		}
	}
	go func() {
		for lines.Scan() {
			fmt.Fprintln(os.Stderr, "agentsec serve:", lines.Text())
		}
	}()
	return cmd.Process, "http://" + addr + "/", func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		out, err := exec.Command(bin, "audit", "verify", "-db", filepath.Join(dir, "audit.db"), "-pubkey", filepath.Join(dir, "bench.pub")).CombinedOutput()
		if err != nil {
			log.Printf("the audit log does not verify: %v\n%s", err, out)
		}
	}
}

// fdatasyncP50 times 200 small writes each followed by fdatasync, in dir.
func fdatasyncP50(dir string) time.Duration {
	f, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	var lat []time.Duration
	buf := make([]byte, 4096)
	for i := range 200 {
		t0 := time.Now()
		f.WriteAt(buf, int64(i%16)*4096)
		syscall.Fdatasync(int(f.Fd()))
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat[len(lat)/2]
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return clientTransport.RoundTrip(r)
}

// clientTransport is the benchmark client's connection pool, for both
// paths: large enough that concurrent calls don't re-dial.
var clientTransport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}

func connectAll(url, token string, n int) []*mcp.ClientSession {
	out := make([]*mcp.ClientSession, n)
	for i := range out {
		client := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil)
		cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{
			Endpoint: url, HTTPClient: &http.Client{Transport: bearer{token}}, MaxRetries: -1}, nil)
		if err != nil {
			log.Fatalf("connecting to %s: %v", url, err)
		}
		out[i] = cs
	}
	return out
}
