package oauth_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
)

const resource = "https://mcp.example.test/mcp"

// setup starts an issuer and a Verifier that maps the client "svc-a" to
// the agent "agent-a" and requires the scope "mcp:tools".
func setup(t testing.TB, tweak func(*oauth.Config)) (*oauthtest.Issuer, *oauth.Verifier) {
	t.Helper()
	is := oauthtest.NewIssuer(resource)
	t.Cleanup(is.Close)
	cfg := oauth.Config{Audience: resource, MinRefreshInterval: 50 * time.Millisecond, Issuers: []oauth.Issuer{
		{URL: is.URL, Scopes: []string{"mcp:tools"}, Agents: map[string]string{"svc-a": "agent-a"}}}}
	if tweak != nil {
		tweak(&cfg)
	}
	v, err := oauth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return is, v
}

// refusal checks that err is an *oauth.Error with the status and code.
func refusal(t *testing.T, err error, status int, code string) *oauth.Error {
	t.Helper()
	var e *oauth.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a refusal with status %d", err, status)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("got status %d code %q (%s), want %d %q", e.Status, e.Code, e.Description, status, code)
	}
	return e
}

func TestVerifyNamesTheAgent(t *testing.T) {
	is, v := setup(t, nil)
	claims := is.Claims("svc-a", "mcp:tools", "other")
	id, err := v.Verify(context.Background(), oauthtest.Sign(claims, is.SigningKey()))
	if err != nil {
		t.Fatal(err)
	}
	if id.Agent != "agent-a" || id.Issuer != is.URL || id.Subject != "svc-a" || id.TokenID != claims["jti"] || id.ClientID != "svc-a" {
		t.Fatalf("identity %+v", id)
	}
	if len(id.Scopes) != 2 || id.Scopes[0] != "mcp:tools" {
		t.Fatalf("scopes %v", id.Scopes)
	}
}

// TestVerifyRefusesAttacks: each forged, stolen or out-of-date token is
// refused with the status and code RFC 6750 gives it.
func TestVerifyRefusesAttacks(t *testing.T) {
	is, v := setup(t, nil)
	key := is.SigningKey()
	good := func() jwt.MapClaims { return is.Claims("svc-a", "mcp:tools") }
	with := func(k string, val any) string {
		c := good()
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return oauthtest.Sign(c, key)
	}
	hour := time.Hour
	other := oauthtest.NewIssuer(resource)
	defer other.Close()

	cases := []struct {
		name, token string
		status      int
		code        string
	}{
		{"expired", with("exp", time.Now().Add(-hour).Unix()), 401, "invalid_token"},
		{"no expiry", with("exp", nil), 401, "invalid_token"},
		{"not yet valid", with("nbf", time.Now().Add(hour).Unix()), 401, "invalid_token"},
		{"issued in the future", with("iat", time.Now().Add(hour).Unix()), 401, "invalid_token"},
		{"wrong issuer", with("iss", "https://evil.example"), 401, "invalid_token"},
		{"wrong audience", with("aud", "https://other.example/mcp"), 401, "invalid_token"},
		{"alg none", oauthtest.Unsigned(good(), key.ID), 401, "invalid_token"},
		{"HS256 keyed with the public key", oauthtest.HMACWithPublicKey(good(), key), 401, "invalid_token"},
		{"unknown kid", oauthtest.Sign(good(), oauthtest.Key{ID: "made-up", Alg: "RS256", Signer: other.SigningKey().Signer}), 401, "invalid_token"},
		{"another issuer's key under our kid", oauthtest.Sign(good(), oauthtest.Key{ID: key.ID, Alg: "RS256", Signer: other.SigningKey().Signer}), 401, "invalid_token"},
		{"payload edited", editPayload(oauthtest.Sign(good(), key)), 401, "invalid_token"},
		{"no kid", noKid(good(), key), 401, "invalid_token"},
		{"not a JWT", "a.b.c", 401, "invalid_token"},
		{"too long", strings.Repeat("a", oauth.MaxTokenBytes+1), 401, "invalid_token"},
		{"no scope", with("scope", nil), 403, "insufficient_scope"},
		{"other scope only", with("scope", "mcp:read"), 403, "insufficient_scope"},
		{"subject with no agent", with("sub", "svc-unknown"), 403, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), c.token)
			e := refusal(t, err, c.status, c.code)
			if e.Description == "" {
				t.Error("no reason given")
			}
			if c.status == 403 && e.Identity == nil {
				t.Error("a genuine token's refusal carries no identity to record")
			}
		})
	}
}

// TestVerifyReadsScpClaims: providers that grant scopes as "scp", a
// string or a list, are read as those that use "scope".
func TestVerifyReadsScpClaims(t *testing.T) {
	is, v := setup(t, nil)
	for _, scp := range []any{"mcp:tools x", []any{"x", "mcp:tools"}} {
		c := is.Claims("svc-a")
		delete(c, "scope")
		c["scp"] = scp
		if _, err := v.Verify(context.Background(), oauthtest.Sign(c, is.SigningKey())); err != nil {
			t.Errorf("scp %v: %v", scp, err)
		}
	}
}

// TestVerifyAgentClaim: a Verifier told to read client_id maps by it,
// not by sub.
func TestVerifyAgentClaim(t *testing.T) {
	is, v := setup(t, func(c *oauth.Config) { c.Issuers[0].AgentClaim = "client_id" })
	c := is.Claims("user-1", "mcp:tools")
	c["client_id"] = "svc-a"
	id, err := v.Verify(context.Background(), oauthtest.Sign(c, is.SigningKey()))
	if err != nil || id.Agent != "agent-a" {
		t.Fatalf("%+v %v", id, err)
	}
}

// TestKeyRotation: a token signed with the issuer's new key is accepted
// once the Verifier fetches the keys again; a token signed with a key
// the issuer withdrew is refused once it has.
func TestKeyRotation(t *testing.T) {
	is, v := setup(t, nil)
	old := is.SigningKey()
	oldToken := is.Token("svc-a", "mcp:tools")
	if _, err := v.Verify(context.Background(), oldToken); err != nil {
		t.Fatal(err)
	}
	is.Rotate("ES256")
	time.Sleep(60 * time.Millisecond) // past MinRefreshInterval
	if _, err := v.Verify(context.Background(), is.Token("svc-a", "mcp:tools")); err != nil {
		t.Fatalf("the new key's token: %v", err)
	}
	is.Retire(old.ID)
	// The old key is dropped at the next fetch: one a token with another
	// unknown key triggers.
	time.Sleep(60 * time.Millisecond)
	v.Verify(context.Background(), oauthtest.Sign(is.Claims("svc-a", "mcp:tools"), oauthtest.Key{ID: "unknown", Alg: "ES256", Signer: is.SigningKey().Signer}))
	_, err := v.Verify(context.Background(), oldToken)
	refusal(t, err, 401, "invalid_token")
}

// TestUnknownKidFloodIsBounded: tokens naming made-up keys make the
// Verifier fetch the keys at most once per MinRefreshInterval.
func TestUnknownKidFloodIsBounded(t *testing.T) {
	is, v := setup(t, func(c *oauth.Config) { c.MinRefreshInterval = time.Hour })
	if _, err := v.Verify(context.Background(), is.Token("svc-a", "mcp:tools")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			tok := oauthtest.Sign(is.Claims("svc-a", "mcp:tools"), oauthtest.Key{ID: fmt.Sprint("kid-", i), Alg: "RS256", Signer: is.SigningKey().Signer})
			v.Verify(context.Background(), tok)
		})
	}
	wg.Wait()
	if hits := is.JWKSHits(); hits != 1 {
		t.Fatalf("the key set was fetched %d times, want 1", hits)
	}
}

// TestKeysRecheckedOnlyWhenWithdrawn: a fetch prompted by a made-up kid
// that finds the same keys, or one that finds a key added, leaves the
// tokens checked already as they are; one that finds a key withdrawn
// makes each be checked again. A flood of made-up kids then costs no
// signature checks of the tokens in hand.
func TestKeysRecheckedOnlyWhenWithdrawn(t *testing.T) {
	is, v := setup(t, func(c *oauth.Config) { c.MinRefreshInterval = 10 * time.Millisecond })
	if _, err := v.Verify(context.Background(), is.Token("svc-a", "mcp:tools")); err != nil {
		t.Fatal(err)
	}
	fetchFor := func(kid string) uint64 {
		t.Helper()
		hits := is.JWKSHits()
		time.Sleep(20 * time.Millisecond) // past MinRefreshInterval
		v.Verify(context.Background(), oauthtest.Sign(is.Claims("svc-a", "mcp:tools"), oauthtest.Key{ID: kid, Alg: is.SigningKey().Alg, Signer: is.SigningKey().Signer}))
		if is.JWKSHits() != hits+1 {
			t.Fatalf("a token of the unknown kid %q fetched the keys %d times, want once", kid, is.JWKSHits()-hits)
		}
		return oauth.KeyGeneration(v, is.URL)
	}
	gen := oauth.KeyGeneration(v, is.URL)
	if g := fetchFor("made-up-1"); g != gen {
		t.Fatalf("the same keys fetched again: generation %d → %d", gen, g)
	}
	old := is.SigningKey()
	is.Rotate("ES256")
	if g := fetchFor("made-up-2"); g != gen {
		t.Fatalf("a key added: generation %d → %d", gen, g)
	}
	is.Retire(old.ID)
	if g := fetchFor("made-up-3"); g == gen {
		t.Fatalf("a key withdrawn, and the generation is still %d", g)
	}
}

// TestIssuerDown: with the issuer down at start, tokens are refused with
// 503 and the reason; once it is up, the Verifier recovers by itself.
// Down mid-run, the keys in hand keep working until KeysMaxAge, then
// tokens are refused until the issuer is back.
func TestIssuerDown(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	is, v := setup(t, func(c *oauth.Config) {
		c.Now = clock
		c.KeysMaxAge = time.Hour
		c.RefreshEvery = 10 * time.Minute
		c.MinRefreshInterval = time.Minute
	})
	tokenAt := func() string {
		c := is.Claims("svc-a", "mcp:tools")
		c["iat"], c["nbf"], c["exp"] = clock().Unix(), clock().Unix(), clock().Add(5*time.Minute).Unix()
		return oauthtest.Sign(c, is.SigningKey())
	}

	is.SetDown(true)
	_, err := v.Verify(context.Background(), tokenAt())
	// What failed is the operator's to know (Cause, logged), not the
	// client's (Description). The issuer's URL is left out of the
	// Description before looking for the status, since its port may hold
	// the digits 503.
	if e := refusal(t, err, http.StatusServiceUnavailable, ""); e.Cause == nil || !strings.Contains(e.Cause.Error(), "HTTP 503") || strings.Contains(strings.ReplaceAll(e.Description, is.URL, ""), "503") {
		t.Errorf("the cause is not kept apart from the client's reason: %q, cause %v", e.Description, e.Cause)
	}
	is.SetDown(false)
	if _, err := v.Verify(context.Background(), tokenAt()); err == nil {
		t.Fatal("a fetch ran again within MinRefreshInterval")
	}
	advance(time.Minute)
	if _, err := v.Verify(context.Background(), tokenAt()); err != nil {
		t.Fatalf("not recovered once the issuer is up: %v", err)
	}

	is.SetDown(true)
	advance(50 * time.Minute) // a background fetch fails; the keys stay
	for range 3 {
		if _, err := v.Verify(context.Background(), tokenAt()); err != nil {
			t.Fatalf("cached keys refused while the issuer is down: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	advance(11 * time.Minute) // past KeysMaxAge
	_, err = v.Verify(context.Background(), tokenAt())
	refusal(t, err, http.StatusServiceUnavailable, "")
	is.SetDown(false)
	advance(time.Minute)
	if _, err := v.Verify(context.Background(), tokenAt()); err != nil {
		t.Fatalf("not recovered: %v", err)
	}
}

// TestDiscoveryChecksTheIssuer: metadata that names another issuer is
// not followed.
func TestDiscoveryChecksTheIssuer(t *testing.T) {
	is := oauthtest.NewIssuer(resource)
	defer is.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{{URL: is.URL + "/", Agents: map[string]string{"svc-a": "a"}}}})
	if err != nil {
		t.Fatal(err)
	}
	err = v.Prefetch(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is for the issuer") {
		t.Fatalf("got %v", err)
	}
}

func TestNewVerifierChecksTheConfig(t *testing.T) {
	agents := map[string]string{"a": "a"}
	for _, cfg := range []oauth.Config{
		{Audience: resource},
		{Audience: resource, Issuers: []oauth.Issuer{{Agents: agents}}},
		{Audience: resource, Issuers: []oauth.Issuer{{URL: "http://idp.example.com", Agents: agents}}},
		{Issuers: []oauth.Issuer{{URL: "https://idp.example.com", Agents: agents}}},
		{Audience: resource, Issuers: []oauth.Issuer{{URL: "https://idp.example.com"}}},
		{Audience: resource, Issuers: []oauth.Issuer{{URL: "https://idp.example.com", Agents: agents, JWKSURL: "ftp://x"}}},
		{Audience: resource, Issuers: []oauth.Issuer{{URL: "https://idp.example.com", Agents: agents}, {URL: "https://idp.example.com", Agents: agents}}},
	} {
		if _, err := oauth.NewVerifier(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func TestMetadataAndChallenge(t *testing.T) {
	is, v := setup(t, nil)
	if got, want := v.MetadataURL(), "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"; got != want {
		t.Errorf("metadata URL %s, want %s", got, want)
	}
	m := v.Metadata()
	if m.Resource != resource || len(m.AuthorizationServers) != 1 || m.AuthorizationServers[0] != is.URL {
		t.Errorf("metadata %+v", m)
	}
	// A caller with no token, or a bad one, is told the scopes to ask
	// for, once.
	_, bad := v.Verify(context.Background(), "not.a.token")
	for _, e := range []*oauth.Error{nil, refusal(t, bad, 401, "invalid_token")} {
		if got := v.Challenge(e); strings.Count(got, `scope="mcp:tools"`) != 1 {
			t.Errorf("challenge %s, want the scope", got)
		}
	}
	_, err := v.Verify(context.Background(), is.Token("svc-a"))
	e := refusal(t, err, 403, "insufficient_scope")
	if got := v.Challenge(e); !strings.Contains(got, `error="insufficient_scope"`) || strings.Count(got, `scope="mcp:tools"`) != 1 || !strings.Contains(got, `resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"`) {
		t.Errorf("challenge %s", got)
	}
}

func editPayload(token string) string {
	parts := strings.Split(token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	payload = []byte(strings.Replace(string(payload), `"svc-a"`, `"svc-b"`, 1))
	parts[1] = base64.RawURLEncoding.EncodeToString(payload)
	return strings.Join(parts, ".")
}

func noKid(c jwt.MapClaims, key oauthtest.Key) string {
	t := jwt.NewWithClaims(jwt.GetSigningMethod(key.Alg), c)
	s, _ := t.SignedString(key.Signer)
	return s
}

// TestVerifiedTokensAreRecheckedWhenTheyLapse: a token verified once is
// not taken on trust past its expiry, nor once the keys it was checked
// against are past KeysMaxAge.
func TestVerifiedTokensAreRecheckedWhenTheyLapse(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	is, v := setup(t, func(c *oauth.Config) {
		c.Now, c.KeysMaxAge, c.RefreshEvery, c.ClockSkew = clock, time.Hour, 2*time.Hour, time.Second
	})
	token := is.Token("svc-a", "mcp:tools") // expires in 5 minutes, by the real clock
	for range 3 {
		if _, err := v.Verify(context.Background(), token); err != nil {
			t.Fatal(err)
		}
	}
	advance(6 * time.Minute)
	_, err := v.Verify(context.Background(), token)
	refusal(t, err, 401, "invalid_token")

	advance(-6 * time.Minute)
	if _, err := v.Verify(context.Background(), token); err != nil {
		t.Fatal(err)
	}
	is.SetDown(true)
	advance(time.Hour) // the keys are past KeysMaxAge, and can't be fetched
	_, err = v.Verify(context.Background(), token)
	refusal(t, err, http.StatusServiceUnavailable, "")
}

// TestRoutineRefreshDropsWithdrawnKeys: with no token naming an unknown
// key to prompt it, the keys are still fetched every RefreshEvery, so a
// token — even one checked before — signed with a key the issuer
// withdrew is refused soon after.
func TestRoutineRefreshDropsWithdrawnKeys(t *testing.T) {
	is, v := setup(t, func(c *oauth.Config) { c.RefreshEvery, c.MinRefreshInterval = 30*time.Millisecond, 10*time.Millisecond })
	old := is.SigningKey()
	token := is.Token("svc-a", "mcp:tools")
	for range 2 { // the second time, from memory
		if _, err := v.Verify(context.Background(), token); err != nil {
			t.Fatal(err)
		}
	}
	is.Rotate("ES256")
	is.Retire(old.ID)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(context.Background(), token)
		if err != nil {
			refusal(t, err, 401, "invalid_token")
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a token of a withdrawn key is still accepted after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
