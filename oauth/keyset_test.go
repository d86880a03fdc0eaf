package oauth_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/oauth/oauthtest"
)

// TestKeySetHygiene: of an issuer's published keys, only signing keys
// that suit the token's algorithm verify it: not a short RSA key, not an
// encryption key, not a key declared for another algorithm, and neither
// of two keys published under one id.
func TestKeySetHygiene(t *testing.T) {
	gen := func(bits int) *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	good, small, enc, ps, dup1, dup2 := gen(2048), gen(1024), gen(2048), gen(2048), gen(2048), gen(2048)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &good.PublicKey, KeyID: "good", Algorithm: "RS256", Use: "sig"},
		{Key: &small.PublicKey, KeyID: "small", Use: "sig"},
		{Key: &enc.PublicKey, KeyID: "enc", Use: "enc"},
		{Key: &ps.PublicKey, KeyID: "ps", Algorithm: "PS256"},
		{Key: &dup1.PublicKey, KeyID: "dup"},
		{Key: &dup2.PublicKey, KeyID: "dup"},
	}}
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/jwks" {
			json.NewEncoder(w).Encode(set)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks"})
	}))
	defer srv.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource, Issuers: []oauth.Issuer{{URL: srv.URL, Agents: map[string]string{"svc-a": "agent-a"}}}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := jwt.MapClaims{"iss": srv.URL, "aud": resource, "sub": "svc-a", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	sign := func(kid string, k *rsa.PrivateKey) string {
		return oauthtest.Sign(claims, oauthtest.Key{ID: kid, Alg: "RS256", Signer: k})
	}
	if _, err := v.Verify(context.Background(), sign("good", good)); err != nil {
		t.Fatalf("the good key: %v", err)
	}
	for kid, key := range map[string]*rsa.PrivateKey{"small": small, "enc": enc, "ps": ps, "dup": dup2} {
		_, err := v.Verify(context.Background(), sign(kid, key))
		if e, ok := err.(*oauth.Error); !ok || e.Status != 401 {
			t.Errorf("a token signed with the %q key: %v, want refused", kid, err)
		}
	}
}

// TestRedirectToPlainHTTPRefused: discovery that redirects off https (to
// plain http off loopback) is not followed.
func TestRedirectToPlainHTTPRefused(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("http://keys.example.com/jwks", http.StatusFound))
	defer srv.Close()
	v, err := oauth.NewVerifier(oauth.Config{Audience: resource,
		Issuers: []oauth.Issuer{{URL: "https://idp.example.com", JWKSURL: srv.URL + "/jwks", Agents: map[string]string{"a": "a"}}}})
	if err != nil {
		t.Fatal(err)
	}
	err = v.Prefetch(context.Background())
	if err == nil || !strings.Contains(err.Error(), "must be an https URL") {
		t.Fatalf("Prefetch: %v", err)
	}
}
