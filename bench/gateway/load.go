//go:build linux

package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A result is one measurement of one path: each call's latency, the
// errors, and the CPU time the path's processes spent meanwhile.
type result struct {
	lat     []time.Duration
	errors  int64
	elapsed time.Duration
	cpu     time.Duration // CPU time of the gateway (or proxy) measured, if any
	sorted  bool
}

// pct returns the p-th percentile of the latencies.
func (r *result) pct(p int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	if !r.sorted {
		slices.Sort(r.lat)
		r.sorted = true
	}
	return r.lat[min(len(r.lat)-1, len(r.lat)*p/100)]
}

// add returns r with o's calls added: two slices of one measurement.
func (r *result) add(o *result) *result {
	if r == nil {
		return o
	}
	r.lat = append(r.lat, o.lat...)
	r.errors += o.errors
	r.elapsed += o.elapsed
	r.cpu += o.cpu
	r.sorted = false
	return r
}

// rate returns the calls per second that succeeded.
func (r *result) rate() float64 { return float64(len(r.lat)) / r.elapsed.Seconds() }

// cpuPerCall returns the measured process's CPU time per call.
func (r *result) cpuPerCall() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.cpu / time.Duration(len(r.lat))
}

func call(cs *mcp.ClientSession) error {
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "noop", Arguments: map[string]any{}})
	if err == nil && res.IsError {
		err = fmt.Errorf("tool error")
	}
	return err
}

// fixedRate offers calls at rate per second, spread over the sessions in
// turn, each at its scheduled time. Latency is measured from the
// scheduled start, so a stalled call delays the ones behind it in the
// measurement too (no coordinated omission).
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

// saturate runs clients callers, spread over the sessions, each calling
// as fast as it can until d has passed or, if calls > 0, that many calls
// have been made in all.
func saturate(sessions []*mcp.ClientSession, clients int, d time.Duration, calls int64) *result {
	res := &result{}
	var mu sync.Mutex
	var errs, started atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for i := range clients {
		cs := sessions[i%len(sessions)]
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) && (calls <= 0 || started.Add(1) <= calls) {
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
	wg.Wait()
	res.elapsed = time.Since(start)
	res.errors = errs.Load()
	return res
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return clientTransport.RoundTrip(r)
}

// clientTransport is the benchmark client's connection pool, for every
// path: large enough that concurrent calls don't re-dial.
var clientTransport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}

// connectAll opens n MCP sessions to url.
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
