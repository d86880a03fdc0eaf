package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// oauthReloadConfig is reloadConfig with an upstream, and tokens of the
// issuer at issuer admitted, the subject sub mapped to the agent bot.
func oauthReloadConfig(upstream, issuer, sub string) string {
	return reloadConfig("verified", fmt.Sprintf(`upstreams: [{name: count, url: %q}]
auth:
  oauth:
    audience: http://127.0.0.1/mcp
    issuers:
      - issuer: %s
        agents: {%s: bot}`, upstream, issuer, sub))
}

// TestServeReloadsOAuth: a reload that remaps an issuer's subjects is in
// force for the next request — a subject whose mapping was removed is
// refused, even in the session it opened, and the new one admitted —
// keeps the issuer's keys fetched already, and records each change.
func TestServeReloadsOAuth(t *testing.T) {
	upstream := newCountingServer(t)
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	s := serveConfig(t, oauthReloadConfig(upstream.URL, is.URL, "svc-a"))
	mcpURL := strings.TrimSuffix(s.api, "/v1") + "/"
	post := func(token, session, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, mcpURL, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+token)
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`

	resp := post(is.Token("svc-a"), "", initialize)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || session == "" {
		t.Fatalf("svc-a's initialize: %d", resp.StatusCode)
	}
	if resp := post(is.Token("svc-b"), "", initialize); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("svc-b, mapped to no agent: %d, want 403", resp.StatusCode)
	}
	fetches := is.JWKSHits()

	s.write(oauthReloadConfig(upstream.URL, is.URL, "svc-b"))
	if status, body := s.postReload(reloadAdminToken); status != http.StatusOK {
		t.Fatalf("reload: %d %s", status, body)
	}
	if resp := post(is.Token("svc-a"), session, list); resp.StatusCode != http.StatusForbidden {
		t.Errorf("svc-a in its own session after its mapping was removed: %d, want 403", resp.StatusCode)
	}
	if resp := post(is.Token("svc-b"), "", initialize); resp.StatusCode != http.StatusOK {
		t.Errorf("svc-b after it was mapped: %d, want 200", resp.StatusCode)
	}
	if n := is.JWKSHits() - fetches; n != 0 {
		t.Errorf("the reload fetched the issuer's keys %d more times; they were in hand", n)
	}
	s.stop()
	records := s.records(eventAuthOAuth)
	if len(records) != 2 {
		t.Fatalf("auth.oauth records %+v, want 2", records)
	}
	for i, want := range []struct{ value, change string }{{"svc-b", "added"}, {"svc-a", "removed"}} {
		r := records[i]
		if r.Agent != "bot" || r.Attrs["oauth_claim_value"] != want.value || r.Attrs["change"] != want.change || r.Attrs["oauth_issuer"] != is.URL {
			t.Errorf("record %d: %+v, want %s %s", i, r, want.value, want.change)
		}
	}
}
