package oauth_test

import (
	"context"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// FuzzVerify feeds the token path tokens mutated from a genuine one: no
// input panics it, and none but a genuine token of the mapped client is
// accepted, as that client's agent.
func FuzzVerify(f *testing.F) {
	is, v := setup(f, nil)
	good := is.Token("svc-a", "mcp:tools")
	f.Add(good)
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add(good[:len(good)-3])
	f.Add(unsigned(is.Claims("svc-a", "mcp:tools"), is.SigningKey().ID))
	f.Add(oauthtest.Sign(is.Claims("svc-b", "mcp:tools"), is.SigningKey()))
	f.Add("")
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err != nil {
			return
		}
		if id.Agent != "agent-a" || id.Subject != "svc-a" || id.Issuer != is.URL {
			t.Fatalf("accepted %q as %+v", token, id)
		}
	})
}
