package mcpgate_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth/extauth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
	"github.com/agentsec/agentsec/trust"
)

// oauthGateway is newHTTPGateway admitting OAuth tokens too: the issuer's
// clients svc-alice and svc-alice-2 are the agent alice, svc-root is
// root, and the scope mcp:tools is required.
func oauthGateway(t *testing.T) (*httptest.Server, *agentsec.Stack, *upstream, *oauthtest.Issuer) {
	t.Helper()
	return oauthGatewayWith(t, nil)
}

// oauthGatewayWith is oauthGateway, with set applied to the Gateway.
func oauthGatewayWith(t *testing.T, set func(*mcpgate.Gateway)) (*httptest.Server, *agentsec.Stack, *upstream, *oauthtest.Issuer) {
	t.Helper()
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	t.Cleanup(is.Close)
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", MinRefreshInterval: 20 * time.Millisecond,
		Issuers: []oauth.Issuer{{URL: is.URL, Scopes: []string{"mcp:tools"},
			Agents: map[string]string{"svc-alice": "alice", "svc-alice-2": "alice", "svc-root": "root"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv, stack, up, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) {
		g.OAuth = v
		if set != nil {
			set(g)
		}
	})
	return srv, stack, up, is
}

// post sends one JSON-RPC message with a token and returns the response.
func post(t *testing.T, url, token, session, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestOAuthTokensOpenGovernedSessions: a client with an issuer's token
// is its agent, governed as with a static token; each call's record
// names the token's issuer, subject and id; static tokens still work.
func TestOAuthTokensOpenGovernedSessions(t *testing.T) {
	srv, stack, up, is := oauthGateway(t)
	ctx := context.Background()
	token := is.Claims("svc-root", "mcp:tools")
	root, err := connect(t, srv, oauthtest.Sign(token, is.SigningKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	alice, err := connect(t, srv, is.Token("svc-alice", "mcp:tools"))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if res, err := root.CallTool(ctx, &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}}); err != nil || res.IsError {
		t.Fatalf("root's call: %+v %v", res, err)
	}
	if res, err := alice.CallTool(ctx, &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}}); err != nil || !res.IsError {
		t.Fatalf("alice's call was not denied: %+v %v", res, err)
	}
	static, err := connect(t, srv, "root-token")
	if err != nil {
		t.Fatal(err)
	}
	defer static.Close()
	if res, err := static.CallTool(ctx, &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}}); err != nil || res.IsError {
		t.Fatalf("the static token's call: %+v %v", res, err)
	}
	if up.calls.Load() != 2 {
		t.Errorf("the server ran %d calls, want 2", up.calls.Load())
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 3 {
		t.Fatalf("records %+v %v", page.Records, err)
	}
	r := page.Records[0]
	if r.Agent != "root" || r.Attrs["oauth_issuer"] != is.URL || r.Attrs["oauth_subject"] != "svc-root" || r.Attrs["oauth_token_id"] != token["jti"] {
		t.Errorf("root's record %+v", r)
	}
	if r := page.Records[1]; r.Agent != "alice" || r.Outcome != audit.OutcomeDenied || r.Attrs["oauth_subject"] != "svc-alice" {
		t.Errorf("alice's record %+v", r)
	}
	if r := page.Records[2]; r.Attrs["oauth_subject"] != "" {
		t.Errorf("a static token's record names an OAuth subject: %+v", r)
	}
}

// TestOAuthRefusals: each bad token, sent to the gateway, gets its status
// and challenge, and reaches no upstream; a genuine token refused is
// recorded, a forged one is not. A key the issuer rotated in is accepted
// once published, and one it withdrew is refused once fetched again.
func TestOAuthRefusals(t *testing.T) {
	srv, stack, up, is := oauthGateway(t)
	key := is.SigningKey()
	with := func(claim string, value any) string {
		c := is.Claims("svc-root", "mcp:tools")
		c[claim] = value
		return oauthtest.Sign(c, key)
	}
	other := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer other.Close()
	forged := oauthtest.Sign(is.Claims("svc-root", "mcp:tools"), oauthtest.Key{ID: key.ID, Alg: "RS256", Signer: other.SigningKey().Signer})
	metadata := `resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp"`
	invalid := []string{metadata, `error="invalid_token"`}
	hour := time.Hour
	cases := []struct {
		name, token string
		status      int
		challenge   []string
		recorded    bool
	}{
		{"no token", "", 401, []string{metadata}, false},
		{"expired", with("exp", time.Now().Add(-hour).Unix()), 401, invalid, false},
		{"not yet valid", with("nbf", time.Now().Add(hour).Unix()), 401, invalid, false},
		{"wrong issuer", with("iss", other.URL), 401, invalid, false},
		{"wrong audience", with("aud", "http://127.0.0.1/other"), 401, invalid, false},
		{"alg none", oauthtest.Unsigned(is.Claims("svc-root", "mcp:tools"), key.ID), 401, invalid, false},
		{"HS256 keyed with the public key", oauthtest.HMACWithPublicKey(is.Claims("svc-root", "mcp:tools"), key), 401, invalid, false},
		{"unknown kid", oauthtest.Sign(is.Claims("svc-root", "mcp:tools"), oauthtest.Key{ID: "made-up", Alg: "RS256", Signer: other.SigningKey().Signer}), 401, invalid, false},
		{"forged", forged, 401, invalid, false},
		{"unknown static token", "nobodys-token", 401, []string{metadata, `error="invalid_token"`}, false},
		{"no scope", is.Token("svc-alice"), 403, []string{metadata, `error="insufficient_scope"`, `scope="mcp:tools"`}, true},
		{"subject with no agent", is.Token("svc-stranger", "mcp:tools"), 403, []string{metadata}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, _ := stack.Audit.Size(), error(nil)
			resp := post(t, srv.URL+"/mcp", c.token, "", initializeBody)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			got := resp.Header.Get("WWW-Authenticate")
			for _, want := range c.challenge {
				if !strings.Contains(got, want) {
					t.Errorf("WWW-Authenticate %q lacks %s", got, want)
				}
			}
			after, _ := stack.Audit.Size(), error(nil)
			if recorded := after > before; recorded != c.recorded {
				t.Errorf("recorded: %v, want %v", recorded, c.recorded)
			}
		})
	}
	// The same genuine token refused again is not recorded again.
	scopeless := is.Token("svc-alice")
	before := stack.Audit.Size()
	for range 3 {
		post(t, srv.URL, scopeless, "", initializeBody)
	}
	if n := stack.Audit.Size() - before; n != 1 {
		t.Errorf("a refused token sent 3 times made %d records, want 1", n)
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: mcpgate.EventAuthRefused})
	if err != nil || len(page.Records) != 3 || page.Records[0].Attrs["oauth_subject"] != "svc-alice" || page.Records[1].Attrs["oauth_subject"] != "svc-stranger" || page.Records[1].Reason == "" {
		t.Errorf("refusal records %+v %v", page.Records, err)
	}

	// The issuer rotates its key and withdraws the old one: the first
	// token signed with the new key has the keys fetched again (once
	// MinRefreshInterval has passed since the last fetch).
	next := is.Rotate("ES256")
	is.Retire(key.ID)
	time.Sleep(30 * time.Millisecond)
	if resp := post(t, srv.URL, oauthtest.Sign(is.Claims("svc-root", "mcp:tools"), next), "", initializeBody); resp.StatusCode != http.StatusOK {
		t.Errorf("a token signed with the new key: %d, want 200", resp.StatusCode)
	}
	resp := post(t, srv.URL, oauthtest.Sign(is.Claims("svc-root", "mcp:tools"), key), "", initializeBody)
	if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(got, `error="invalid_token"`) {
		t.Errorf("a token signed with the withdrawn key: %d %s, want 401", resp.StatusCode, got)
	}
	if up.calls.Load() != 0 {
		t.Errorf("the server ran %d calls", up.calls.Load())
	}
}

// TestOAuthSessionStaysWithItsIdentity: a session opened with one
// subject's token can't be used with another's — another agent's, or
// another subject mapped to the same agent — but can with the same
// subject's next token. Each attempt is recorded, as a decision about a
// caller with a valid token; a session id that exists nowhere is not.
func TestOAuthSessionStaysWithItsIdentity(t *testing.T) {
	srv, stack, _, is := oauthGateway(t)
	resp := post(t, srv.URL, is.Token("svc-alice", "mcp:tools"), "", initializeBody)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != 200 || session == "" {
		t.Fatalf("initialize: %d", resp.StatusCode)
	}
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	for name, token := range map[string]string{
		"another agent's token":       is.Token("svc-root", "mcp:tools"),
		"the same agent, another sub": is.Token("svc-alice-2", "mcp:tools"),
		"the agent's static token":    "alice-token",
	} {
		if resp := post(t, srv.URL, token, session, list); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", name, resp.StatusCode)
		}
	}
	if resp := post(t, srv.URL, is.Token("svc-alice", "mcp:tools"), session, list); resp.StatusCode != 200 {
		t.Errorf("the same subject's next token: status %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL, nil)
	req.Header.Set("Authorization", "Bearer root-token")
	req.Header.Set("Mcp-Session-Id", session)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE with another agent's token: %v %v", resp, err)
	}
	if resp := post(t, srv.URL, is.Token("svc-root", "mcp:tools"), "NOSUCHSESSION", list); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a session that does not exist: status %d", resp.StatusCode)
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: mcpgate.EventSessionRefused})
	if err != nil || len(page.Records) != 4 {
		t.Fatalf("records %+v %v, want 4", page.Records, err)
	}
	byAgent, bySubject := map[string]int{}, map[string]int{}
	for _, r := range page.Records {
		byAgent[r.Agent]++
		bySubject[r.Attrs["oauth_subject"]]++
		if r.Session != session || r.Outcome != audit.OutcomeDenied || !strings.Contains(r.Reason, `agent "alice" signed in with an OAuth token`) {
			t.Errorf("record %+v", r)
		}
	}
	if byAgent["root"] != 2 || byAgent["alice"] != 2 || bySubject["svc-root"] != 1 || bySubject["svc-alice-2"] != 1 {
		t.Errorf("records by agent %v, by subject %v", byAgent, bySubject)
	}
}

// TestOAuthLeavesStaticTokensOfAnyForm: with OAuth on, a static token
// shaped like a JWT (two dots) is still its agent's.
func TestOAuthLeavesStaticTokensOfAnyForm(t *testing.T) {
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: is.URL, Agents: map[string]string{"svc": "alice"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) {
		g.OAuth = v
		g.Agents = append(g.Agents, mcpgate.Credential{TokenSHA256: sha256.Sum256([]byte("team.root.2026")), Agent: "root"})
	})
	if resp := post(t, srv.URL, "team.root.2026", "", initializeBody); resp.StatusCode != http.StatusOK {
		t.Errorf("a static token with two dots: status %d", resp.StatusCode)
	}
	if resp := post(t, srv.URL, "team.nobody.2026", "", initializeBody); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an unknown token with two dots: status %d", resp.StatusCode)
	}
}

// authCounter is an AuthObserver that counts the refusals by reason.
type authCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *authCounter) ObserveToolCall(string, time.Duration, time.Duration) {}
func (c *authCounter) ObserveUpstream(string, bool)                         {}

func (c *authCounter) ObserveAuthRefused(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[reason]++
}

// TestOAuthRefusalsObserved: each request refused for its caller is told
// to the gateway's AuthObserver once, under its reason — those the log
// records and those it does not.
func TestOAuthRefusalsObserved(t *testing.T) {
	counter := &authCounter{n: map[string]int{}}
	var gw *mcpgate.Gateway
	srv, _, _, is := oauthGatewayWith(t, func(g *mcpgate.Gateway) { g.Observer, gw = counter, g })
	resp := post(t, srv.URL, is.Token("svc-alice", "mcp:tools"), "", initializeBody)
	session := resp.Header.Get("Mcp-Session-Id")
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	for _, token := range []string{"", "", "nobodys-token", is.Token("svc-alice"), is.Token("svc-stranger", "mcp:tools")} {
		post(t, srv.URL, token, "", initializeBody)
	}
	post(t, srv.URL, "root-token", session, list)
	down := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer down.Close()
	down.SetDown(true)
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: down.URL, Agents: map[string]string{"svc": "alice"}}}})
	if err != nil {
		t.Fatal(err)
	}
	gw.SetOAuth(v)
	if resp := post(t, srv.URL, down.Token("svc"), "", initializeBody); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("the issuer down: %d", resp.StatusCode)
	}
	want := map[string]int{"no_token": 2, "invalid_token": 1, "insufficient_scope": 1, "no_agent": 1, "not_session_owner": 1, "keys_unavailable": 1}
	counter.mu.Lock()
	defer counter.mu.Unlock()
	if !maps.Equal(counter.n, want) {
		t.Errorf("observed %v, want %v", counter.n, want)
	}
}

// TestOAuthOpaqueTokens: with introspection, an opaque token opens a
// governed session, its calls recorded with its id; revoked at the issuer,
// it is refused in that session once the answer's cache time has passed.
func TestOAuthOpaqueTokens(t *testing.T) {
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: is.URL,
		Agents: map[string]string{"svc-root": "root"},
		Introspection: &oauth.Introspection{ClientID: oauthtest.IntrospectorID, ClientSecret: oauthtest.IntrospectorSecret,
			Opaque: true, CacheFor: 50 * time.Millisecond}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv, stack, up, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) { g.OAuth = v })
	claims := is.Claims("svc-root")
	token := is.OpaqueToken(claims)
	resp := post(t, srv.URL, token, "", initializeBody)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || session == "" {
		t.Fatalf("initialize with an opaque token: %d", resp.StatusCode)
	}
	post(t, srv.URL, token, session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	call := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"shell.exec","arguments":{"text":"x"}}}`
	if resp := post(t, srv.URL, token, session, call); resp.StatusCode != http.StatusOK || up.calls.Load() != 1 {
		t.Fatalf("the call: %d, %d run", resp.StatusCode, up.calls.Load())
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 1 || page.Records[0].Attrs["oauth_token_id"] != claims["jti"] || page.Records[0].Agent != "root" {
		t.Fatalf("records %+v %v", page.Records, err)
	}
	is.Revoke(token)
	time.Sleep(60 * time.Millisecond)
	if resp := post(t, srv.URL, token, session, strings.Replace(call, `"id":3`, `"id":4`, 1)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the revoked token in its session: %d, want 401", resp.StatusCode)
	}
	if up.calls.Load() != 1 {
		t.Errorf("the server ran %d calls", up.calls.Load())
	}
}

// TestOAuthEachCallRecordsItsOwnToken: a session outlives the token that
// opened it; each call is recorded with the id of the token its request
// carried.
func TestOAuthEachCallRecordsItsOwnToken(t *testing.T) {
	srv, stack, up, is := oauthGateway(t)
	first, next := is.Claims("svc-root", "mcp:tools"), is.Claims("svc-root", "mcp:tools")
	resp := post(t, srv.URL, oauthtest.Sign(first, is.SigningKey()), "", initializeBody)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != 200 || session == "" {
		t.Fatalf("initialize: %d", resp.StatusCode)
	}
	post(t, srv.URL, oauthtest.Sign(first, is.SigningKey()), session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	call := `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"shell.exec","arguments":{"text":"x"}}}`
	for i, claims := range []map[string]any{first, next} {
		if resp := post(t, srv.URL, oauthtest.Sign(claims, is.SigningKey()), session, fmt.Sprintf(call, i+2)); resp.StatusCode != 200 {
			t.Fatalf("call %d: status %d", i, resp.StatusCode)
		}
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 2 || up.calls.Load() != 2 {
		t.Fatalf("records %+v %v, %d calls run", page.Records, err, up.calls.Load())
	}
	for i, claims := range []map[string]any{first, next} {
		if r := page.Records[i]; r.Outcome != audit.OutcomeAllowed || r.Attrs["oauth_token_id"] != claims["jti"] || r.Attrs["oauth_subject"] != "svc-root" {
			t.Errorf("call %d's record %+v, want token id %v", i, r, claims["jti"])
		}
	}
}

// TestOAuthSessionOfAClientWithoutSubject: tokens with no "sub", their
// clients named by client_id, still bind a session to the client that
// opened it.
func TestOAuthSessionOfAClientWithoutSubject(t *testing.T) {
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: is.URL, AgentClaim: "client_id",
		Agents: map[string]string{"client-a": "alice", "client-b": "alice"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) { g.OAuth = v })
	token := func(client string) string {
		c := is.Claims(client)
		delete(c, "sub")
		return oauthtest.Sign(c, is.SigningKey())
	}
	resp := post(t, srv.URL, token("client-a"), "", initializeBody)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || session == "" {
		t.Fatalf("initialize: %d", resp.StatusCode)
	}
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	if resp := post(t, srv.URL, token("client-b"), session, list); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another client of the same agent: %d, want 404", resp.StatusCode)
	}
	if resp := post(t, srv.URL, token("client-a"), session, list); resp.StatusCode != http.StatusOK {
		t.Errorf("the same client: %d, want 200", resp.StatusCode)
	}
}

// TestOAuthMetadata: the protected-resource metadata is served without a
// token at the well-known path, alone and followed by the resource's
// path.
func TestOAuthMetadata(t *testing.T) {
	srv, _, _, is := oauthGateway(t)
	for _, path := range []string{"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var m oauth.ResourceMetadata
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || m.Resource != "http://127.0.0.1/mcp" || len(m.AuthorizationServers) != 1 || m.AuthorizationServers[0] != is.URL {
			t.Errorf("%s: %d %+v %v", path, resp.StatusCode, m, err)
		}
	}
}

// TestOAuthIssuerDown: with the issuer down, tokens are refused with 503
// and Retry-After, and the gateway recovers by itself.
//
// Why an issuer could not be reached goes to the operator's log, once
// however many requests it fails, and not to the client: a network
// error may name hosts and addresses inside the operator's network. Two
// issuers down at once are each logged: one's failures don't hide the
// other's.
func TestOAuthIssuerDown(t *testing.T) {
	var logged syncbuf.Buffer
	issuers := []*oauthtest.Issuer{oauthtest.NewIssuer("http://127.0.0.1/mcp"), oauthtest.NewIssuer("http://127.0.0.1/mcp")}
	subjects := []string{"svc-alice", "svc-bob"}
	var config []oauth.Issuer
	for i, is := range issuers {
		t.Cleanup(is.Close)
		config = append(config, oauth.Issuer{URL: is.URL, Scopes: []string{"mcp:tools"}, Agents: map[string]string{subjects[i]: "alice"}})
	}
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", MinRefreshInterval: 20 * time.Millisecond, Issuers: config})
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _, _ := newHTTPGatewayWith(t, func(g *mcpgate.Gateway) {
		g.OAuth = v
		g.Log = slog.New(slog.NewTextHandler(&logged, nil))
	})
	for _, is := range issuers {
		is.SetDown(true)
	}
	for range 3 {
		for i, is := range issuers {
			req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(initializeBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+is.Token(subjects[i], "mcp:tools"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
			if !strings.Contains(string(body), "can't be had") || strings.Contains(string(body), "well-known") || strings.Contains(string(body), "HTTP 503") {
				t.Fatalf("the client is told why the issuer could not be reached: %s", body)
			}
		}
	}
	log := logged.String()
	if lines := strings.Count(log, "could not be reached"); lines != len(issuers) {
		t.Fatalf("%d log lines for %d issuers down, want one each:\n%s", lines, len(issuers), log)
	}
	for _, is := range issuers {
		if !strings.Contains(log, "issuer="+is.URL) {
			t.Fatalf("no line names the issuer %s:\n%s", is.URL, log)
		}
	}
	if !strings.Contains(log, "HTTP 503 Service Unavailable") {
		t.Fatalf("the log does not say why: %s", log)
	}
	for _, is := range issuers {
		is.SetDown(false)
	}
	time.Sleep(30 * time.Millisecond)
	for i, is := range issuers {
		if resp := post(t, srv.URL, is.Token(subjects[i], "mcp:tools"), "", initializeBody); resp.StatusCode != 200 {
			t.Fatalf("after the issuer %s is back: status %d", is.URL, resp.StatusCode)
		}
	}
}

// TestOAuthTokenNeverReachesTheUpstream: the client's token is the
// gateway's to check, not the upstream's to see.
func TestOAuthTokenNeverReachesTheUpstream(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		noopServer().ServeHTTP(w, r)
	}))
	defer upstream.Close()
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: is.URL, Agents: map[string]string{"svc": "bench"}}}})
	if err != nil {
		t.Fatal(err)
	}
	stack := newStack(t, []trust.Rule{{Tool: "noop", Level: "public"}}, []trust.Assignment{{Agent: "bench", Level: "public"}}, 10, nil)
	gw := &mcpgate.Gateway{Stack: stack, OAuth: v, Upstreams: []mcpgate.Upstream{mcpgate.HTTPUpstream("noop", upstream.URL, 0)}, AllowUnlistedTools: true}
	srv := httptest.NewServer(gw)
	defer func() { gw.Close(); srv.Close() }()
	session, err := connect(t, srv, is.Token("svc"))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if res, err := session.CallTool(context.Background(), &mcp.CallToolParams{Name: "noop"}); err != nil || res.IsError {
		t.Fatalf("the call: %+v %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("the upstream saw nothing")
	}
	for _, h := range seen {
		if h != "" {
			t.Fatalf("the upstream saw Authorization: %q", h)
		}
	}
}

// TestOAuthWithAnUnmodifiedGoSDKClient: the Go SDK's client-credentials
// handler, given only a client id and secret, finds the gateway's
// protected-resource metadata from its 401, gets a token from the
// issuer, and calls tools as the agent the client maps to.
func TestOAuthWithAnUnmodifiedGoSDKClient(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	endpoint := "http://" + srv.Listener.Addr().String() + "/mcp"
	is := oauthtest.NewIssuer(endpoint)
	defer is.Close()
	is.AddClient("svc-root", oauthtest.Client{Secret: "s3cret", Scopes: []string{"mcp:tools"}})
	v, err := oauth.NewVerifier(oauth.Config{Audience: endpoint, Issuers: []oauth.Issuer{{URL: is.URL, Scopes: []string{"mcp:tools"},
		Agents: map[string]string{"svc-root": "root"}}}})
	if err != nil {
		t.Fatal(err)
	}
	stack := newStack(t, []trust.Rule{{Tool: "shell.exec", Level: "privileged"}}, []trust.Assignment{{Agent: "root", Level: "privileged"}}, 10, nil)
	up := newUpstream()
	gw := &mcpgate.Gateway{Stack: stack, OAuth: v, Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}}}
	srv.Config.Handler = gw
	srv.Start()
	defer func() { gw.Close(); srv.Close() }()

	handler, err := extauth.NewClientCredentialsHandler(&extauth.ClientCredentialsHandlerConfig{
		Credentials: &oauthex.ClientCredentials{ClientID: "svc-root", ClientSecretAuth: &oauthex.ClientSecretAuth{ClientSecret: "s3cret"}}})
	if err != nil {
		t.Fatal(err)
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	session, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: endpoint, OAuthHandler: handler, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	res, err := session.CallTool(context.Background(), &mcp.CallToolParams{Name: "shell.exec", Arguments: map[string]any{"text": "x"}})
	if err != nil || res.IsError {
		t.Fatalf("%+v %v", res, err)
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 1 || page.Records[0].Agent != "root" || page.Records[0].Attrs["oauth_subject"] != "svc-root" {
		t.Fatalf("records %+v %v", page.Records, err)
	}
}

// TestOAuthSessionStaysWithItsIdentityOnEveryReplica: the binding holds
// on a replica that takes the session up from the shared store.
func TestOAuthSessionStaysWithItsIdentityOnEveryReplica(t *testing.T) {
	is := oauthtest.NewIssuer("http://127.0.0.1/mcp")
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: "http://127.0.0.1/mcp", Issuers: []oauth.Issuer{{URL: is.URL,
		Agents: map[string]string{"svc-alice": "alice", "svc-alice-2": "alice"}}}})
	if err != nil {
		t.Fatal(err)
	}
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}}, []trust.Assignment{{Agent: "alice", Level: "verified"}}, 10, nil)
	up := newUpstream()
	sessions := &memorySessions{}
	var srvs []*httptest.Server
	for range 2 {
		gw := &mcpgate.Gateway{Stack: stack, Sessions: sessions, OAuth: v, Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}}}
		srv := httptest.NewServer(gw)
		t.Cleanup(func() { gw.Close(); srv.Close() })
		srvs = append(srvs, srv)
	}
	cs := openAs(t, srvs[0].URL, is.Token("svc-alice"))
	list := `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`
	if resp := post(t, srvs[1].URL, is.Token("svc-alice-2"), cs.ID(), list); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another subject of the same agent on the other replica: %d, want 404", resp.StatusCode)
	}
	page, err := stack.Audit.Query(context.Background(), audit.Filter{Event: mcpgate.EventSessionRefused})
	if err != nil || len(page.Records) != 1 || page.Records[0].Attrs["oauth_subject"] != "svc-alice-2" || page.Records[0].Session != cs.ID() {
		t.Errorf("the other replica's records %+v %v", page.Records, err)
	}
	if resp := post(t, srvs[1].URL, is.Token("svc-alice"), cs.ID(), list); resp.StatusCode != http.StatusOK {
		t.Errorf("the same subject on the other replica: %d, want 200", resp.StatusCode)
	}
}
