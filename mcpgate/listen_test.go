package mcpgate_test

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/mcpgate"
)

// serveLimited serves handler over HTTP on a loopback listener with the
// given limits, and returns its address. New connections have a minute
// to send their headers, so that idle ones hold their places for the
// test's length.
func serveLimited(t *testing.T, limits mcpgate.ListenerLimits, handler http.Handler) (string, *mcpgate.LimitedListener) {
	t.Helper()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if limits.Log == nil {
		limits.Log = slog.New(slog.DiscardHandler)
	}
	ln, err := mcpgate.LimitListener(tcp, limits)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: time.Minute}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), ln
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

// dialFrom opens a TCP connection to addr from the loopback address from,
// closed when the test ends.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// getFrom makes a GET request to addr from the loopback address from, on
// a connection of its own, and returns the status and the body.
func getFrom(t *testing.T, from, addr string) (int, http.Header, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET from %s: %v", from, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// waitOpen waits until ln holds want connections.
func waitOpen(t *testing.T, ln *mcpgate.LimitedListener, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		open, _ := ln.Counts()
		if open == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listener holds %d connections, want %d", open, want)
		}
	}
}

func TestLimitListenerValidates(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, tt := range []struct {
		limits mcpgate.ListenerLimits
		want   string
	}{
		{mcpgate.ListenerLimits{MaxConnections: -1}, "MaxConnections is -1, negative"},
		{mcpgate.ListenerLimits{MaxConnectionsPerAddress: -1}, "MaxConnectionsPerAddress is -1, negative"},
		{mcpgate.ListenerLimits{MaxConnections: 10, MaxConnectionsPerAddress: 11}, "MaxConnectionsPerAddress (11) is more than MaxConnections (10)"},
		{mcpgate.ListenerLimits{MaxConnectionsPerAddress: mcpgate.DefaultMaxConnections + 1}, "is more than MaxConnections (4096)"},
		{mcpgate.ListenerLimits{}, ""},
		{mcpgate.ListenerLimits{MaxConnections: 10}, ""}, // per address: 10, not 256
	} {
		_, err := mcpgate.LimitListener(tcp, tt.limits)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("LimitListener(%+v) = %v", tt.limits, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("LimitListener(%+v) = %v, want an error containing %q", tt.limits, err, tt.want)
		}
	}
}

// One address at its bound is refused, with a reason, while another is
// served; a place freed is taken again.
func TestLimitListenerPerAddress(t *testing.T) {
	addr, ln := serveLimited(t, mcpgate.ListenerLimits{MaxConnections: 8, MaxConnectionsPerAddress: 2}, okHandler)
	idle := dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.1", addr)
	waitOpen(t, ln, 2)

	code, h, body := getFrom(t, "127.0.0.1", addr)
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" || !strings.Contains(body, "too many connections from your address (the most is 2)") {
		t.Errorf("a third connection from 127.0.0.1: %d, Retry-After %q, %q; want 429 with Retry-After and a reason", code, h.Get("Retry-After"), body)
	}
	if code, _, body := getFrom(t, "127.0.0.2", addr); code != http.StatusOK || body != "ok" {
		t.Errorf("a connection from 127.0.0.2: %d %q, want 200", code, body)
	}
	idle.Close()
	waitOpen(t, ln, 1)
	if code, _, body := getFrom(t, "127.0.0.1", addr); code != http.StatusOK {
		t.Errorf("127.0.0.1 after one of its connections closed: %d %q, want 200", code, body)
	}
}

// The overall bound holds whatever the addresses.
func TestLimitListenerOverall(t *testing.T) {
	addr, ln := serveLimited(t, mcpgate.ListenerLimits{MaxConnections: 3, MaxConnectionsPerAddress: 2}, okHandler)
	dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.1", addr)
	other := dialFrom(t, "127.0.0.2", addr)
	waitOpen(t, ln, 3)

	code, h, body := getFrom(t, "127.0.0.3", addr)
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(body, "3 connections open, its limit") {
		t.Errorf("a fourth connection: %d, Retry-After %q, %q; want 503 with Retry-After and a reason", code, h.Get("Retry-After"), body)
	}
	if open, _ := ln.Counts(); open != 3 {
		t.Errorf("the listener holds %d connections, want 3", open)
	}
	other.Close()
	waitOpen(t, ln, 2)
	if code, _, body := getFrom(t, "127.0.0.3", addr); code != http.StatusOK {
		t.Errorf("after a connection closed: %d %q, want 200", code, body)
	}
}

// Thousands of idle connections from one address take only that
// address's places; the refused ones are closed, and a client elsewhere
// is served at once.
func TestLimitListenerFlood(t *testing.T) {
	const flood, per = 3000, 16
	addr, ln := serveLimited(t, mcpgate.ListenerLimits{MaxConnections: 64, MaxConnectionsPerAddress: per}, okHandler)
	conns := make([]net.Conn, flood)
	var wg sync.WaitGroup
	var next atomic.Int64
	var most atomic.Int64
	for range 32 {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 10 * time.Second}
			for i := next.Add(1) - 1; i < flood; i = next.Add(1) - 1 {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					t.Errorf("dial %d: %v", i, err)
					return
				}
				conns[i] = c
				if open, _ := ln.Counts(); int64(open) > most.Load() {
					most.Store(int64(open))
				}
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if t.Failed() {
		return
	}
	start := time.Now()
	if code, _, body := getFrom(t, "127.0.0.2", addr); code != http.StatusOK || body != "ok" {
		t.Errorf("a client from 127.0.0.2 during the flood: %d %q, want 200", code, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a client from 127.0.0.2 waited %v during the flood", d)
	}
	if m := most.Load(); m > per {
		t.Errorf("the listener held %d connections of the flood, more than %d", m, per)
	}
	// Every connection of the flood but the ones held is closed by the
	// gateway: its read ends (EOF or reset) instead of waiting.
	var closed atomic.Int64
	for _, c := range conns {
		go func() {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
				closed.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(15 * time.Second); closed.Load() < flood-per && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := closed.Load(); n != flood-per {
		t.Errorf("%d connections of the flood were closed, want %d (all but the %d held)", n, flood-per, per)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Connections opened and closed at once from many goroutines, each closed
// several times concurrently, leave the counts at zero, and the bound is
// never passed.
func TestLimitListenerCountsUnderRace(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const max = 20
	ln, err := mcpgate.LimitListener(tcp, mcpgate.ListenerLimits{MaxConnections: max, MaxConnectionsPerAddress: max / 2,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var over atomic.Bool
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if open, _ := ln.Counts(); open > max {
				over.Store(true)
			}
			for range 3 {
				go func() {
					time.Sleep(time.Millisecond)
					c.Close()
				}()
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+g%4))}}
			for range 200 {
				c, err := d.Dial("tcp", ln.Addr().String())
				if err != nil {
					continue // refused, or out of ephemeral ports for a moment
				}
				c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
				c.Close()
			}
		})
	}
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		open, addrs := ln.Counts()
		if open == 0 && addrs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every connection closed: %d open from %d addresses, want 0 and 0", open, addrs)
		}
	}
	if over.Load() {
		t.Errorf("the listener held more than %d connections", max)
	}
	ln.Close()
	<-accepted
}

// A refused client that sends nothing is closed within the refusal's
// time, not answered: an HTTP client would take bytes before its request
// for a broken connection.
func TestLimitListenerRefusesSilentClients(t *testing.T) {
	addr, ln := serveLimited(t, mcpgate.ListenerLimits{MaxConnections: 1}, okHandler)
	dialFrom(t, "127.0.0.1", addr)
	waitOpen(t, ln, 1)
	c := dialFrom(t, "127.0.0.2", addr)
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := bufio.NewReader(c).Read(make([]byte, 1))
	if n != 0 || err == nil || isTimeout(err) {
		t.Errorf("a refused connection that sent nothing: read %d, %v; want it closed", n, err)
	}
}

// An IPv6 client is counted by its /64, an IPv4-mapped one as IPv4.
func TestAddressKey(t *testing.T) {
	key := func(s string) netip.Prefix {
		return mcpgate.AddressKey(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)))
	}
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"[2001:db8::1]:1", "[2001:db8::ffff:2]:2", true},
		{"[2001:db8::1]:1", "[2001:db8:0:1::1]:1", false},
		{"[::ffff:192.0.2.1]:1", "192.0.2.1:2", true},
		{"192.0.2.1:1", "192.0.2.2:1", false},
		{"[fe80::1%eth0]:1", "[fe80::2%eth1]:1", true},
	} {
		if got := key(tt.a) == key(tt.b); got != tt.same {
			t.Errorf("%s and %s counted together: %v, want %v (%v, %v)", tt.a, tt.b, got, tt.same, key(tt.a), key(tt.b))
		}
	}
	if k := key("[::ffff:192.0.2.1]:1"); k != netip.MustParsePrefix("192.0.2.1/32") {
		t.Errorf("an IPv4-mapped address counts as %v", k)
	}
}
