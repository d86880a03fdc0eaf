package mcpgate_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"github.com/agentsec/agentsec/audit/audittest"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// noopServer is the least an MCP server over streamable HTTP can be:
// every request is answered at once with plain JSON, a tool call with
// "ok". It keeps the benchmark's cost the gateway's.
func noopServer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		body, _ := io.ReadAll(r.Body)
		id := jsonField(body, `"id":`)
		if id == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		result := `{"content":[{"type":"text","text":"ok"}]}`
		if bytes.Contains(body, []byte(`"method":"tools/list"`)) {
			result = `{"tools":[{"name":"noop","inputSchema":{"type":"object"}}]}`
		}
		if bytes.Contains(body, []byte(`"method":"initialize"`)) {
			result = `{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"noop","version":"1"}}`
			w.Header().Set("Mcp-Session-Id", "noop-session")
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(id)+`,"result":`+result+`}`)
	})
}

// jsonField returns the number or string after key in a flat JSON
// message, or nil.
func jsonField(body []byte, key string) []byte {
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return nil
	}
	rest := body[i+len(key):]
	end := bytes.IndexAny(rest, ",}")
	if end < 0 {
		return nil
	}
	return rest[:end]
}

// mcpClient posts JSON-RPC messages over one pool of connections.
type mcpClient struct {
	url, token, session string
	http                *http.Client
	next                atomic.Int64
}

func (c *mcpClient) post(b *testing.B, body string) *http.Response {
	req, _ := http.NewRequest(http.MethodPost, c.url, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	return resp
}

func (c *mcpClient) open(b *testing.B) {
	resp := c.post(b, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.session = resp.Header.Get("Mcp-Session-Id")
	resp = c.post(b, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	resp.Body.Close()
}

func (c *mcpClient) callTool(b *testing.B) {
	id := strconv.FormatInt(c.next.Add(1), 10)
	resp := c.post(b, `{"jsonrpc":"2.0","id":`+id+`,"method":"tools/call","params":{"name":"noop","arguments":{}}}`)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"text":"ok"`)) {
		b.Fatalf("tools/call: %d %s", resp.StatusCode, body)
	}
}

// BenchmarkToolCall measures one tools/call over streamable HTTP from a
// lean client to a no-op server: straight, through a bare
// httputil.ReverseProxy (the floor of any hop in between), and through
// the gateway with the audit log in memory and durable in SQLite. The
// gateway's difference from direct, against the proxy's, is what
// governance costs above a hop; -benchmem counts its allocations.
func BenchmarkToolCall(b *testing.B) {
	upstream := httptest.NewServer(noopServer())
	defer upstream.Close()
	pool := &http.Transport{MaxIdleConnsPerHost: 256}
	defer pool.CloseIdleConnections()

	run := func(b *testing.B, url, token string) {
		c := &mcpClient{url: url, token: token, http: &http.Client{Transport: pool}}
		c.open(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.callTool(b)
			}
		})
	}
	b.Run("direct", func(b *testing.B) { run(b, upstream.URL, "") })
	b.Run("proxy", func(b *testing.B) {
		target, _ := url.Parse(upstream.URL)
		proxy := httputil.NewSingleHostReverseProxy(target)
		proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 256}
		srv := httptest.NewServer(proxy)
		defer srv.Close()
		run(b, srv.URL, "")
	})
	for _, durable := range []bool{false, true} {
		name := map[bool]string{false: "gateway-memory-audit", true: "gateway-sqlite-audit"}[durable]
		b.Run(name, func(b *testing.B) {
			path := ""
			if durable {
				path = filepath.Join(b.TempDir(), "audit.db")
			}
			run(b, benchGateway(b, upstream.URL, path), "t")
		})
	}
}

// benchGateway serves a gateway in front of the MCP server at upstream,
// its one agent's token "t", its audit log in memory or, given a path,
// in SQLite there; the log is verified when b ends.
func benchGateway(b *testing.B, upstream, auditPath string) string {
	cfg := agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{ToolName: "noop", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "bench", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
		AuditNamespace: "bench",
	}
	if auditPath != "" {
		key, _, err := audit.GenerateKey("bench")
		if err != nil {
			b.Fatal(err)
		}
		cfg.Audit = agentsec.AuditConfig{Path: auditPath, SignerKey: key}
	}
	stack, err := agentsec.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	gw := &mcpgate.Gateway{Stack: stack,
		Agents:    []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("t")), Agent: "bench"}},
		Upstreams: []mcpgate.Upstream{mcpgate.HTTPUpstream("noop", upstream, 0)}}
	srv := httptest.NewServer(gw)
	b.Cleanup(func() {
		srv.Close()
		gw.Close()
		if _, err := stack.Audit.Verify(context.Background()); err != nil {
			b.Error(err)
		}
		stack.Close()
	})
	return srv.URL
}

// BenchmarkToolCallIdle is BenchmarkToolCall at a light load, where
// processors sit idle between calls and each call starts on cold caches,
// as in bench/gateway at 500 calls/s: one call every 2 ms, in turns of
// 20 calls a path, the paths' turns in a new order each round. Its paths
// are direct, a bare reverse proxy, and the gateway with its audit log
// in memory and, durable, in SQLite's record log on tmpfs (/dev/shm),
// where a sync costs nothing but the system call. It reports each
// path's median of the rounds' medians, and each gateway's overhead as
// bench/gateway does: (gateway − direct) ÷ (proxy − direct), the median
// of the rounds'. The two gateways differ only in the log's store, so
// theirs is what the record's write costs. Run it with -benchtime Nx
// for N rounds.
func BenchmarkToolCallIdle(b *testing.B) {
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		b.Skip("no /dev/shm, Linux's tmpfs, here")
	}
	dir, err := os.MkdirTemp("/dev/shm", "agentsec-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	upstream := httptest.NewServer(noopServer())
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{}
	proxySrv := httptest.NewServer(proxy)
	defer proxySrv.Close()

	const direct, viaProxy, turn = 0, 1, 20
	paths := []struct {
		name, url, token string
		c                *mcpClient
	}{
		{name: "direct", url: upstream.URL},
		{name: "proxy", url: proxySrv.URL},
		{name: "gateway-memory-audit", url: benchGateway(b, upstream.URL, ""), token: "t"},
		{name: "gateway-record-log-tmpfs", url: benchGateway(b, upstream.URL, filepath.Join(dir, "audit.db")), token: "t"},
	}
	for i := range paths {
		paths[i].c = &mcpClient{url: paths[i].url, token: paths[i].token, http: &http.Client{Transport: &http.Transport{}}}
		paths[i].c.open(b)
	}
	medians := make([][]time.Duration, len(paths)) // each round's median, by path
	order := []int{0, 1, 2, 3}
	lat := make([]time.Duration, turn)
	for b.Loop() {
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, p := range order {
			for i := range lat {
				time.Sleep(2 * time.Millisecond)
				start := time.Now()
				paths[p].c.callTool(b)
				lat[i] = time.Since(start)
			}
			medians[p] = append(medians[p], audittest.Median(lat))
		}
	}
	for p, path := range paths {
		b.ReportMetric(float64(audittest.Median(medians[p]).Microseconds()), "µs-"+path.name)
		if p <= viaProxy {
			continue
		}
		ratios := make([]time.Duration, len(medians[p]))
		for r := range ratios {
			// Ratios as durations, in thousandths, for median's sake.
			ratios[r] = 1000 * (medians[p][r] - medians[direct][r]) / max(medians[viaProxy][r]-medians[direct][r], 1)
		}
		b.ReportMetric(float64(audittest.Median(ratios))/1000, "overhead-"+path.name)
	}
}
