package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/store/sqlite"
)

// TestServeAPIAlone: a configuration with no upstreams serves the
// decision API alone, on the port -addr-file names; the process stops
// when its stdin ends (-stop-on-stdin-eof), recording the call still open
// as spent, and its log verifies.
func TestServeAPIAlone(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := (&Main{Stdout: &out, Stderr: &out}).Run(context.Background(), []string{"keygen", "-name", "api", "-dir", dir}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("agent-token"))
	cfg := `{"namespace": "api", "listen": "127.0.0.1:0",
  "trust": {"rules": [{"tool": "read", "level": "public"}],
            "agents": [{"id": "a1", "level": "public", "token_sha256": "` + hex.EncodeToString(sum[:]) + `"}]},
  "budget": {"tokens": 1000, "calls": 10},
  "audit": {"path": "audit.db", "key_file": "api.key"}}`
	file := filepath.Join(dir, "agentsec.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	stdin, hold := io.Pipe()
	var stderr syncbuf.Buffer
	done := make(chan error, 1)
	addrFile := filepath.Join(dir, "addr")
	go func() {
		done <- (&Main{Stdin: stdin, Stdout: io.Discard, Stderr: &stderr}).Run(context.Background(),
			[]string{"serve", "-config", file, "-addr-file", addrFile, "-stop-on-stdin-eof"})
	}()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			addr = strings.TrimSpace(string(b))
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no address after 10s\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	post := func(path, body string) map[string]any {
		req, _ := http.NewRequest("POST", "http://"+addr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer agent-token")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		json.NewDecoder(resp.Body).Decode(&v)
		return v
	}
	if r := post("/v1/calls", `{"tool": "read", "session": "s"}`); r["call_id"] == nil {
		t.Fatalf("begin: %v", r)
	}
	// No MCP here: the gateway's path answers the API's not-found.
	if resp, err := http.Post("http://"+addr+"/mcp", "application/json", strings.NewReader("{}")); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /mcp without upstreams: %v %v", resp, err)
	}
	hold.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after stdin ended: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve still running 15s after its stdin ended")
	}
	if !strings.Contains(stderr.String(), "serving the decision API on http://"+addr+"/v1/") {
		t.Errorf("stderr does not name the API's address:\n%s", stderr.String())
	}
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(dir, "audit.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	page, err := audit.Query(ctx, store, audit.Filter{Event: "tool.call"})
	if err != nil || len(page.Records) != 1 || !strings.Contains(page.Records[0].Reason, "server stopped") {
		t.Fatalf("records after stop: %+v, %v", page.Records, err)
	}
	if err := (&Main{Stdout: &out, Stderr: &out}).Run(ctx, []string{"audit", "verify", "-db", filepath.Join(dir, "audit.db"), "-pubkey", filepath.Join(dir, "api.pub")}); err != nil {
		t.Fatalf("verify: %v\n%s", err, out.String())
	}
}

// TestOneCredentialPerToken: an agent whose token sits on several scoped
// entries has one credential, in the API (with every scope) and in the
// gateway, whose exactly-one-match check refused it with one per entry.
func TestOneCredentialPerToken(t *testing.T) {
	sum := sha256.Sum256([]byte("t"))
	h := hex.EncodeToString(sum[:])
	cfg, err := config.Parse([]byte(`{"namespace": "n", "listen": "127.0.0.1:0", "budget": {"tokens": 1, "calls": 1},
  "trust": {"agents": [{"id": "a", "level": "public", "token_sha256": "`+h+`"},
                       {"id": "a", "scope": "staging", "level": "privileged", "token_sha256": "`+h+`"}]},
  "upstreams": [{"name": "u", "url": "http://127.0.0.1:1/mcp"}]}`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	api, err := apiFor(cfg, "f")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gatewayFor(cfg, "f", api.Agents)
	if err != nil {
		t.Fatal(err)
	}
	if len(api.Agents) != 1 || len(api.Agents[0].Scopes) != 2 || len(gw.Agents) != 1 {
		t.Errorf("API credentials %+v, gateway credentials %d; want one each, the API's with both scopes", api.Agents, len(gw.Agents))
	}
}
