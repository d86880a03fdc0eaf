package oauth_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// TestSeveralIssuers: each issuer's tokens are checked against its own
// keys and mapped by its own agents and scopes; a subject is one issuer's
// word, and a token signed by one issuer that claims another is refused.
func TestSeveralIssuers(t *testing.T) {
	a, b := oauthtest.NewIssuer(resource), oauthtest.NewIssuer(resource)
	defer a.Close()
	defer b.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{
		{URL: a.URL, Scopes: []string{"mcp:tools"}, Agents: map[string]string{"svc": "agent-a"}},
		{URL: b.URL, Scopes: []string{"b.tools"}, AgentClaim: "client_id", Agents: map[string]string{"svc": "agent-b", "svc-b-only": "agent-b2"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		is            *oauthtest.Issuer
		sub, scope    string
		agent, issuer string
	}{
		{a, "svc", "mcp:tools", "agent-a", a.URL},
		{b, "svc", "b.tools", "agent-b", b.URL},
		{b, "svc-b-only", "b.tools", "agent-b2", b.URL},
	} {
		id, err := v.Verify(ctx, c.is.Token(c.sub, c.scope))
		if err != nil || id.Agent != c.agent || id.Issuer != c.issuer {
			t.Errorf("%s's token for %s: %+v %v, want agent %s", c.issuer, c.sub, id, err, c.agent)
		}
	}
	// A's subject is not B's: svc-b-only is mapped under B alone.
	_, err = v.Verify(ctx, a.Token("svc-b-only", "mcp:tools"))
	refusal(t, err, http.StatusForbidden, "")

	// Each issuer's required scopes are its own, and so is the challenge.
	_, err = v.Verify(ctx, b.Token("svc", "mcp:tools"))
	e := refusal(t, err, http.StatusForbidden, "insufficient_scope")
	if ch := v.Challenge(e); !strings.Contains(ch, `scope="b.tools"`) {
		t.Errorf("challenge %s, want B's scope", ch)
	}

	// Signed with A's key, claiming to be B's: checked against B's keys.
	forged := b.Claims("svc", "b.tools")
	_, err = v.Verify(ctx, oauthtest.Sign(forged, a.SigningKey()))
	refusal(t, err, http.StatusUnauthorized, "invalid_token")
	// Claiming an issuer not configured.
	other := a.Claims("svc", "mcp:tools")
	other["iss"] = "https://idp.example.com"
	_, err = v.Verify(ctx, oauthtest.Sign(other, a.SigningKey()))
	if e := refusal(t, err, http.StatusUnauthorized, "invalid_token"); !strings.Contains(e.Description, "another issuer") {
		t.Errorf("reason %q", e.Description)
	}

	m := v.Metadata()
	if !slices.Equal(m.AuthorizationServers, []string{a.URL, b.URL}) || !slices.Equal(m.ScopesSupported, []string{"mcp:tools", "b.tools"}) {
		t.Errorf("metadata %+v", m)
	}
	// The issuers require different scopes: a caller with no token is
	// not told one set, which would be wrong for the other issuer.
	if ch := v.Challenge(nil); strings.Contains(ch, "scope=") {
		t.Errorf("challenge %s names scopes the issuers don't share", ch)
	}
}

// TestPrefetchNamesTheIssuerThatFailed: with one issuer down, Prefetch
// fetches the other's keys and names the one it could not reach; the
// other's tokens pass, the one's are refused with 503.
func TestPrefetchNamesTheIssuerThatFailed(t *testing.T) {
	a, b := oauthtest.NewIssuer(resource), oauthtest.NewIssuer(resource)
	defer a.Close()
	defer b.Close()
	b.SetDown(true)
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{
		{URL: a.URL, Agents: map[string]string{"svc": "agent-a"}},
		{URL: b.URL, Agents: map[string]string{"svc": "agent-b"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = v.Prefetch(context.Background())
	if err == nil || !strings.Contains(err.Error(), b.URL) || strings.Contains(err.Error(), a.URL+":") {
		t.Fatalf("Prefetch: %v", err)
	}
	hits := a.JWKSHits()
	if _, err := v.Verify(context.Background(), a.Token("svc")); err != nil || a.JWKSHits() != hits {
		t.Fatalf("A's token after the prefetch: %v, %d more fetches", err, a.JWKSHits()-hits)
	}
	_, err = v.Verify(context.Background(), b.Token("svc"))
	refusal(t, err, http.StatusServiceUnavailable, "")
}
