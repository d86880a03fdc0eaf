package oauth_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// introspecting is setup with the issuer's tokens confirmed at its
// introspection endpoint, its opaque tokens accepted, answers held for a
// minute, and a clock the test moves.
func introspecting(t *testing.T) (*oauthtest.Issuer, *oauth.Verifier, func(time.Duration)) {
	t.Helper()
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	is, v := setup(t, func(c *oauth.Config) {
		c.Now = clock
		c.Issuers[0].Introspection = &oauth.Introspection{ClientID: oauthtest.IntrospectorID, ClientSecret: oauthtest.IntrospectorSecret,
			Opaque: true, CacheFor: time.Minute}
	})
	return is, v, advance
}

// opaqueClaims are what the issuer says of an opaque token for svc-a.
func opaqueClaims(is *oauthtest.Issuer) jwt.MapClaims {
	c := is.Claims("svc-a", "mcp:tools")
	c["aud"] = resource
	return c
}

// TestOpaqueTokens: an opaque token is what the issuer says it is, asked
// once per CacheFor; revoked, it is refused once that has passed.
func TestOpaqueTokens(t *testing.T) {
	is, v, advance := introspecting(t)
	ctx := context.Background()
	claims := opaqueClaims(is)
	token := is.OpaqueToken(claims)
	for range 3 {
		id, err := v.Verify(ctx, token)
		if err != nil || id.Agent != "agent-a" || id.Issuer != is.URL || id.TokenID != claims["jti"] {
			t.Fatalf("the opaque token: %+v %v", id, err)
		}
	}
	if n := is.IntrospectionHits(); n != 1 {
		t.Errorf("the issuer was asked %d times, want once", n)
	}
	is.Revoke(token)
	if _, err := v.Verify(ctx, token); err != nil {
		t.Errorf("revoked, within the cache time: %v", err)
	}
	advance(time.Minute + time.Second)
	_, err := v.Verify(ctx, token)
	if e := refusal(t, err, http.StatusUnauthorized, "invalid_token"); !strings.Contains(e.Description, "not active") {
		t.Errorf("reason %q", e.Description)
	}
}

// TestOpaqueTokenChecks: what the issuer answers is checked as a JWT's
// claims are; a token it calls inactive is not asked about again for a
// while; a string that is no bearer token is never sent to it.
func TestOpaqueTokenChecks(t *testing.T) {
	is, v, _ := introspecting(t)
	with := func(claim string, value any) string {
		c := opaqueClaims(is)
		if value == nil {
			delete(c, claim)
		} else {
			c[claim] = value
		}
		return is.OpaqueToken(c)
	}
	for _, c := range []struct {
		name, token string
		status      int
		code        string
	}{
		{"no audience", with("aud", nil), 401, "invalid_token"},
		{"another audience", with("aud", "https://other.example/mcp"), 401, "invalid_token"},
		{"another issuer", with("iss", "https://evil.example"), 401, "invalid_token"},
		{"no expiry", with("exp", nil), 401, "invalid_token"},
		{"not yet valid", with("nbf", time.Now().Add(time.Hour).Unix()), 401, "invalid_token"},
		{"no scope", with("scope", nil), 403, "insufficient_scope"},
		{"subject with no agent", with("sub", "svc-unknown"), 403, ""},
		{"unknown to the issuer", "opaque-made-up", 401, "invalid_token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), c.token)
			refusal(t, err, c.status, c.code)
		})
	}
	hits := is.IntrospectionHits()
	_, err := v.Verify(context.Background(), "opaque-made-up")
	refusal(t, err, http.StatusUnauthorized, "invalid_token")
	_, err = v.Verify(context.Background(), "not a token")
	refusal(t, err, http.StatusUnauthorized, "invalid_token")
	if n := is.IntrospectionHits() - hits; n != 0 {
		t.Errorf("the issuer was asked %d more times about an inactive token and a malformed one", n)
	}
}

// TestRevokedJWT: with introspection, a JWT the issuer revokes before it
// expires is refused once the answer's cache time has passed.
func TestRevokedJWT(t *testing.T) {
	is, v, advance := introspecting(t)
	if err := v.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	token := is.Token("svc-a", "mcp:tools")
	if _, err := v.Verify(context.Background(), token); err != nil {
		t.Fatal(err)
	}
	is.Revoke(token)
	advance(30 * time.Second)
	if _, err := v.Verify(context.Background(), token); err != nil {
		t.Errorf("within the cache time: %v", err)
	}
	advance(31 * time.Second)
	_, err := v.Verify(context.Background(), token)
	refusal(t, err, http.StatusUnauthorized, "invalid_token")
	if n := is.IntrospectionHits(); n != 2 {
		t.Errorf("the issuer was asked %d times, want 2", n)
	}
}

// TestIntrospectionDown: a token that can't be confirmed is refused with
// 503 — a JWT too, though its signature checks — until the issuer
// answers again.
func TestIntrospectionDown(t *testing.T) {
	is, v, _ := introspecting(t)
	if err := v.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	is.SetDown(true)
	for _, token := range []string{is.Token("svc-a", "mcp:tools"), is.OpaqueToken(opaqueClaims(is))} {
		_, err := v.Verify(context.Background(), token)
		refusal(t, err, http.StatusServiceUnavailable, "")
	}
	is.SetDown(false)
	for _, token := range []string{is.Token("svc-a", "mcp:tools"), is.OpaqueToken(opaqueClaims(is))} {
		if _, err := v.Verify(context.Background(), token); err != nil {
			t.Errorf("the issuer back: %v", err)
		}
	}
}

// TestIntrospectionFloodIsBounded: made-up tokens sent at once make at
// most MaxIntrospections requests to the issuer at a time; the rest are
// refused with 503, not queued.
func TestIntrospectionFloodIsBounded(t *testing.T) {
	is, v, _ := introspecting(t)
	is.SetIntrospectionDelay(50 * time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := range 100 {
		wg.Go(func() {
			_, err := v.Verify(context.Background(), "opaque-flood-"+strings.Repeat("x", i))
			e, _ := err.(*oauth.Error)
			mu.Lock()
			statuses[e.Status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if peak := is.PeakIntrospections(); peak > oauth.MaxIntrospections {
		t.Errorf("%d introspections at once, more than %d", peak, oauth.MaxIntrospections)
	}
	if statuses[http.StatusServiceUnavailable] == 0 || statuses[http.StatusUnauthorized] == 0 || statuses[401]+statuses[503] != 100 {
		t.Errorf("statuses %v: want some 401 (asked) and some 503 (refused unasked)", statuses)
	}
}

// TestOneIssuerOfOpaqueTokens: an opaque token names no issuer, so two
// issuers can't both accept them; introspection needs credentials.
func TestOneIssuerOfOpaqueTokens(t *testing.T) {
	in := &oauth.Introspection{ClientID: "a", ClientSecret: "b", Opaque: true}
	agents := map[string]string{"svc": "a"}
	for name, cfg := range map[string]oauth.Config{
		"two opaque issuers": {Audience: resource, Issuers: []oauth.Issuer{
			{URL: "https://a.example", Agents: agents, Introspection: in}, {URL: "https://b.example", Agents: agents, Introspection: in}}},
		"no secret": {Audience: resource, Issuers: []oauth.Issuer{
			{URL: "https://a.example", Agents: agents, Introspection: &oauth.Introspection{ClientID: "a"}}}},
		"introspection over http": {Audience: resource, Issuers: []oauth.Issuer{
			{URL: "https://a.example", Agents: agents, Introspection: &oauth.Introspection{ClientID: "a", ClientSecret: "b", URL: "http://a.example/introspect"}}}},
	} {
		if _, err := oauth.NewVerifier(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
