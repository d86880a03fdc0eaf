package oauth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

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

// FuzzIssuerAnswers feeds the Verifier an issuer whose metadata, key set
// and introspection answers are the fuzzer's: no answer panics it, a JWT
// is accepted only as its mapped subject's, and an opaque token only if
// the answer said it is active and for this resource.
func FuzzIssuerAnswers(f *testing.F) {
	var answers atomic.Pointer[[3][]byte] // metadata, key set, introspection
	mux := http.NewServeMux()
	for i, path := range []string{"/.well-known/openid-configuration", "/jwks", "/introspect"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) { w.Write(answers.Load()[i]) })
	}
	srv := httptest.NewServer(mux)
	f.Cleanup(srv.Close)
	is := oauthtest.NewIssuer(resource)
	f.Cleanup(is.Close)
	key := is.SigningKey()
	claims := is.Claims("svc-a", "mcp:tools")
	claims["iss"] = srv.URL
	token := oauthtest.Sign(claims, key)

	metadata, _ := json.Marshal(map[string]string{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks", "introspection_endpoint": srv.URL + "/introspect"})
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Signer.Public(), KeyID: key.ID, Algorithm: key.Alg, Use: "sig"}}})
	active := jwt.MapClaims{"active": true}
	maps.Copy(active, claims)
	answer, _ := json.Marshal(active)
	f.Add(metadata, jwks, answer)
	f.Add(metadata, jwks, []byte(`{"active":false}`))
	f.Add(metadata, []byte(`{"keys":[{"kty":"oct","k":"AAAA","kid":"`+key.ID+`"}]}`), []byte(`{"active":"true","aud":["`+resource+`"]}`))
	f.Add([]byte(`{"issuer":"`+srv.URL+`"}`), []byte(`{}`), []byte(`[]`))
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, metadata, jwks, answer []byte) {
		answers.Store(&[3][]byte{metadata, jwks, answer})
		v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{{URL: srv.URL, Scopes: []string{"mcp:tools"},
			Agents:        map[string]string{"svc-a": "agent-a"},
			Introspection: &oauth.Introspection{ClientID: "gw", ClientSecret: "s", Opaque: true}}}})
		if err != nil {
			t.Fatal(err)
		}
		if id, err := v.Verify(context.Background(), token); err == nil && (id.Agent != "agent-a" || id.Subject != "svc-a") {
			t.Fatalf("the JWT accepted as %+v", id)
		}
		id, err := v.Verify(context.Background(), fmt.Sprintf("opaque-%d", n.Add(1)))
		if err != nil {
			return
		}
		var said struct {
			Active bool `json:"active"`
		}
		var aud jwt.ClaimStrings
		if json.Unmarshal(answer, &said) != nil || !said.Active || id.Agent != "agent-a" {
			t.Fatalf("an opaque token accepted as %+v on the answer %s", id, answer)
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(answer, &m) != nil || json.Unmarshal(m["aud"], &aud) != nil || !slices.Contains(aud, resource) {
			t.Fatalf("an opaque token accepted for another audience: %s", answer)
		}
	})
}
