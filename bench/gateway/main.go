// Command gateway measures what the agentsec gateway adds to a tools/call
// over streamable HTTP: the same no-op tool is called straight on an MCP
// server and through the gateway in front of it, with the durable SQLite
// audit log on, at fixed offered rates and at saturation. Everything runs
// on loopback in this process.
//
//	go run ./bench/gateway                 # defaults: rates 500 and 2000/s, 10 s each
//	go run ./bench/gateway -duration 5s -rates 500,2000 -sessions 16
//
// Latency is measured from each call's scheduled start, so a stalled call
// delays the ones behind it in the measurement too (no coordinated
// omission).
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

func main() {
	duration := flag.Duration("duration", 10*time.Second, "how long each measurement runs")
	ratesFlag := flag.String("rates", "500,2000", "offered rates in calls per second, comma-separated")
	sessions := flag.Int("sessions", 16, "client sessions the calls are spread over")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to `file`")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	var rates []int
	for _, f := range strings.Split(*ratesFlag, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			log.Fatalf("bad rate %q", f)
		}
		rates = append(rates, r)
	}

	upstreamURL := serveUpstream()
	gatewayURL, closeGateway := serveGateway(upstreamURL)
	defer closeGateway()

	direct := connectAll(upstreamURL, "", *sessions)
	gated := connectAll(gatewayURL, "bench-token", *sessions)

	fmt.Printf("# agentsec gateway benchmark: %d sessions, %v per measurement, durable SQLite audit\n\n", *sessions, *duration)
	fmt.Println("| load | path | calls/s | p50 | p99 | errors |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, rate := range rates {
		d := fixedRate(direct, rate, *duration)
		g := fixedRate(gated, rate, *duration)
		row("offered "+strconv.Itoa(rate)+"/s", "direct", d)
		row("offered "+strconv.Itoa(rate)+"/s", "gateway", g)
		fmt.Printf("| offered %d/s | **added** | | **%v** | **%v** | |\n", rate,
			(g.pct(50) - d.pct(50)).Round(time.Microsecond), (g.pct(99) - d.pct(99)).Round(time.Microsecond))
	}
	d := saturate(direct, *duration)
	g := saturate(gated, *duration)
	row("saturation", "direct", d)
	row("saturation", "gateway", g)
	fmt.Printf("| saturation | **gateway/direct** | **%.0f%%** | | | |\n", 100*g.rate()/d.rate())
}

type result struct {
	lat     []time.Duration
	errors  int64
	elapsed time.Duration
}

func (r *result) pct(p int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	return r.lat[min(len(r.lat)-1, len(r.lat)*p/100)]
}

func (r *result) rate() float64 { return float64(len(r.lat)) / r.elapsed.Seconds() }

func row(load, path string, r *result) {
	fmt.Printf("| %s | %s | %.0f | %v | %v | %d |\n", load, path, r.rate(),
		r.pct(50).Round(time.Microsecond), r.pct(99).Round(time.Microsecond), r.errors)
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

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return ln
}

// serveUpstream serves an MCP server with one no-op tool over streamable
// HTTP and returns its URL.
func serveUpstream() string {
	server := mcp.NewServer(&mcp.Implementation{Name: "noop", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "noop", Description: "does nothing"},
		func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	ln := listen()
	go http.Serve(ln, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
	return "http://" + ln.Addr().String() + "/"
}

// serveGateway serves the agentsec gateway, with a durable signed audit
// log, in front of upstream, and returns its URL.
func serveGateway(upstream string) (string, func()) {
	dir, err := os.MkdirTemp("", "agentsec-bench-")
	if err != nil {
		log.Fatal(err)
	}
	skey, _, err := audit.GenerateKey("bench")
	if err != nil {
		log.Fatal(err)
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			ToolName: "noop", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "bench", Level: "public"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
		AuditNamespace: "bench",
		Audit:          agentsec.AuditConfig{Path: filepath.Join(dir, "audit.db"), SignerKey: skey},
	})
	if err != nil {
		log.Fatal(err)
	}
	gw := &mcpgate.Gateway{
		Stack:     stack,
		Agents:    []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("bench-token")), Agent: "bench"}},
		Upstreams: []mcpgate.Upstream{mcpgate.HTTPUpstream("noop", upstream, 0)},
		LocalOnly: true,
		Log:       slog.New(slog.DiscardHandler),
	}
	ln := listen()
	// The gateway's goroutines carry a profiler label, so a CPU profile
	// (-cpuprofile) can tell its share: go tool pprof -tagfocus side=gateway.
	labelled := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pprof.Do(r.Context(), pprof.Labels("side", "gateway"), func(context.Context) { gw.ServeHTTP(w, r) })
	})
	srv := &http.Server{Handler: labelled}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/", func() {
		gw.Close()
		srv.Close()
		if n, err := stack.Audit.Verify(context.Background()); err != nil {
			log.Printf("audit log of %d records does not verify: %v", n, err)
		}
		stack.Close()
		os.RemoveAll(dir)
	}
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
