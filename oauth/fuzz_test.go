package oauth_test

import (
	"context"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// FuzzVerify feeds the token path tokens mutated from genuine ones of
// two issuers: no input panics it, and none but a genuine token of a
// mapped client is accepted, as the agent its own issuer maps it to.
func FuzzVerify(f *testing.F) {
	a, b := oauthtest.NewIssuer(resource), oauthtest.NewIssuer(resource)
	f.Cleanup(a.Close)
	f.Cleanup(b.Close)
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{
		{URL: a.URL, Scopes: []string{"mcp:tools"}, Agents: map[string]string{"svc-a": "agent-a"}},
		{URL: b.URL, Agents: map[string]string{"svc-b": "agent-b"}},
	}})
	if err != nil {
		f.Fatal(err)
	}
	good := a.Token("svc-a", "mcp:tools")
	f.Add(good)
	f.Add(b.Token("svc-b"))
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add(good[:len(good)-3])
	f.Add(oauthtest.Unsigned(a.Claims("svc-a", "mcp:tools"), a.SigningKey().ID))
	f.Add(oauthtest.Sign(a.Claims("svc-b", "mcp:tools"), a.SigningKey()))
	f.Add(oauthtest.Sign(b.Claims("svc-a", "mcp:tools"), a.SigningKey()))
	f.Add("")
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err != nil {
			return
		}
		if !(id.Agent == "agent-a" && id.Subject == "svc-a" && id.Issuer == a.URL) &&
			!(id.Agent == "agent-b" && id.Subject == "svc-b" && id.Issuer == b.URL) {
			t.Fatalf("accepted %q as %+v", token, id)
		}
	})
}
