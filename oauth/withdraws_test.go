package oauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// TestWithdraws: a fetched key set withdraws a key — and the tokens
// verified under the old set must be checked again — when a key id is
// gone, or names another key or another algorithm; keys added, or the
// same keys published again, withdraw nothing.
func TestWithdraws(t *testing.T) {
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edOther, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A copy of the same public key, as a new fetch decodes it: equal,
	// not the same pointer.
	edCopy := append(ed25519.PublicKey(nil), edPub...)
	ecCopy := ec.PublicKey
	key := func(k any, alg string) jose.JSONWebKey { return jose.JSONWebKey{Key: k, Algorithm: alg} }
	prev := map[string]jose.JSONWebKey{"ed": key(edPub, "EdDSA"), "ec": key(&ec.PublicKey, "ES256")}

	for _, c := range []struct {
		name string
		next map[string]jose.JSONWebKey
		want bool
	}{
		{"the same keys, decoded again", map[string]jose.JSONWebKey{"ed": key(edCopy, "EdDSA"), "ec": key(&ecCopy, "ES256")}, false},
		{"a key added", map[string]jose.JSONWebKey{"ed": key(edCopy, "EdDSA"), "ec": key(&ecCopy, "ES256"), "new": key(edOther, "EdDSA")}, false},
		{"a key removed", map[string]jose.JSONWebKey{"ed": key(edCopy, "EdDSA")}, true},
		{"an id naming another key", map[string]jose.JSONWebKey{"ed": key(edOther, "EdDSA"), "ec": key(&ecCopy, "ES256")}, true},
		{"an id naming a key of another type", map[string]jose.JSONWebKey{"ed": key(&ecCopy, "EdDSA"), "ec": key(&ecCopy, "ES256")}, true},
		{"an id's algorithm changed", map[string]jose.JSONWebKey{"ed": key(edCopy, "EdDSA"), "ec": key(&ecCopy, "ES384")}, true},
		{"an id's algorithm dropped", map[string]jose.JSONWebKey{"ed": key(edCopy, ""), "ec": key(&ecCopy, "ES256")}, true},
		{"every key gone", map[string]jose.JSONWebKey{}, true},
	} {
		if got := withdraws(prev, c.next); got != c.want {
			t.Errorf("%s: withdraws = %v, want %v", c.name, got, c.want)
		}
	}
	if withdraws(map[string]jose.JSONWebKey{}, prev) {
		t.Error("the first key set withdraws nothing")
	}
}
