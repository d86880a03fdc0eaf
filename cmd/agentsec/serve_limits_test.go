package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
)

const limitsToken = "ags_limits-test"

// startLimitedServe starts agentsec serve as a process that may open only
// 256 files, with the given configuration lines added, and returns the
// address it serves on.
func startLimitedServe(t *testing.T, extra string) string {
	t.Helper()
	if _, err := exec.LookPath("agentsec"); err != nil {
		t.Fatalf("the test binary's agentsec command is not on PATH: %v", err)
	}
	dir := t.TempDir()
	skey, _, err := audit.GenerateKey("limits-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gw.key"), []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`namespace: limits-test
trust:
  rules: [{tool: read, level: public}]
  agents: [{id: bot, level: public, token_sha256: %x}]
budget: {tokens: 1000, calls: 10}
audit: {path: audit.db, key_file: gw.key}
listen: 127.0.0.1:0
upstreams:
  - {name: up, command: %q, env: {%s: %q}}
%s`, sha256.Sum256([]byte(limitsToken)), os.Args[0], echoServerEnv, filepath.Join(dir, "calls"), extra)
	cfgPath := filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `ulimit -n 256 && exec agentsec serve -config "$1"`, "sh", cfgPath)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var log syncbuf.Buffer
	endpoint := make(chan string, 1)
	go func() {
		addr := regexp.MustCompile(`serving MCP on http://(\S+)/`)
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			fmt.Fprintln(&log, lines.Text())
			if m := addr.FindStringSubmatch(lines.Text()); m != nil {
				endpoint <- m[1]
			}
		}
		close(endpoint)
	}()
	select {
	case addr, ok := <-endpoint:
		if !ok {
			t.Fatalf("agentsec serve exited: %s", log.String())
		}
		limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", cmd.Process.Pid))
		if err == nil && !regexp.MustCompile(`Max open files\s+256\s+256`).Match(limits) {
			t.Fatalf("agentsec serve may open more than 256 files:\n%s", limits)
		}
		return addr
	case <-time.After(30 * time.Second):
		t.Fatalf("agentsec serve did not start serving: %s", log.String())
	}
	return ""
}

// agentsec serve closes keep-alive connections idle for
// connection_idle_timeout, cuts off a body that does not arrive within
// request_body_timeout, and a flood of idle connections from one
// address, more than the process has file descriptors, leaves a client
// at another address served.
func TestServeBoundsConnections(t *testing.T) {
	addr := startLimitedServe(t, `max_connections: 100
max_connections_per_address: 20
connection_idle_timeout: 1s
request_body_timeout: 1s
`)
	from := func(ip string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	}

	t.Run("idle connection closed", func(t *testing.T) {
		c, err := from("127.0.0.3").Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A request the gateway answers (400: no session) and keeps the
		// connection for the next.
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", addr, limitsToken)
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusBadRequest || resp.Close {
			t.Fatalf("got %d, close %v; want a 400 that keeps the connection", resp.StatusCode, resp.Close)
		}
		start := time.Now()
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("an idle keep-alive connection: %v after %v; want it closed (EOF) after connection_idle_timeout", err, time.Since(start))
		}
	})

	// The gateway bounds the body (Gateway.RequestBodyTimeout, set from
	// request_body_timeout), and closes the connection after a 401.
	t.Run("stalled body", func(t *testing.T) {
		for _, tt := range []struct {
			name, auth string
			want       int
			says       string
		}{
			{"authenticated", "Authorization: Bearer " + limitsToken + "\r\n", http.StatusRequestTimeout, "did not arrive within 1s"},
			{"unauthenticated", "", http.StatusUnauthorized, "bearer token is required"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				c, err := from("127.0.0.4").Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"", addr, tt.auth)
				c.SetReadDeadline(time.Now().Add(15 * time.Second))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no answer to a body that never ends: %v", err)
				}
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tt.want || !strings.Contains(string(body), tt.says) {
					t.Errorf("got %d %q, want %d saying %q", resp.StatusCode, body, tt.want, tt.says)
				}
				if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
					t.Errorf("after the answer: %v; want the connection closed", err)
				}
			})
		}
	})

	t.Run("flood", func(t *testing.T) {
		const flood = 2000
		conns := make([]net.Conn, flood)
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				d := from("127.0.0.1")
				for i := next.Add(1) - 1; i < flood; i = next.Add(1) - 1 {
					c, err := d.Dial("tcp", addr)
					if err != nil {
						t.Errorf("dial %d: %v", i, err)
						return
					}
					conns[i] = c
				}
			})
		}
		wg.Wait()
		d := from("127.0.0.2")
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
		req, err := http.NewRequest("POST", "http://"+addr+"/", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"server/discover"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+limitsToken)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("a client from 127.0.0.2 during a flood of %d connections from 127.0.0.1: %v", flood, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "-32601") {
			t.Errorf("a client from 127.0.0.2 during the flood: %d %q after %v, want 200 and -32601", resp.StatusCode, body, time.Since(start))
		}
	})
}

// TestAddrFileIgnoresPlantedLinks: the address file is written through a
// temporary file of a random name, so a link planted at FILE.tmp — a name
// once known in advance — turns no write on the file it names.
func TestAddrFileIgnoresPlantedLinks(t *testing.T) {
	dir := t.TempDir()
	precious := filepath.Join(dir, "precious")
	if err := os.WriteFile(precious, []byte("keep me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(dir, "addr")
	if err := os.Symlink(precious, addr+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomically(addr, []byte("127.0.0.1:1\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(precious); string(got) != "keep me\n" {
		t.Errorf("the file a planted link named now reads %q", got)
	}
	if got, _ := os.ReadFile(addr); string(got) != "127.0.0.1:1\n" {
		t.Errorf("the address file reads %q", got)
	}
}
