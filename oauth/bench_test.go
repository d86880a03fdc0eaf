package oauth_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/oauth"
)

// BenchmarkVerify measures checking an access token with the issuer's
// keys in hand, against the static-token path it sits beside (a SHA-256
// of the token and a constant-time compare, as the gateway does): the
// difference is what OAuth adds to each request. The gateway looks a
// token up among the static ones first, so an access token pays that
// lookup too, and it is measured with it, handing its digest on as the
// gateway does. A client presents the
// same token on each request until it expires, and only its first
// presentation checks the signature (-first-sight), whose floor is the
// signature check alone (RS256-signature-alone: rsa.VerifyPKCS1v15 of the
// token's SHA-256).
func BenchmarkVerify(b *testing.B) {
	// Keys are fetched again as soon as a token names a new one.
	is, v := setup(b, func(c *oauth.Config) { c.MinRefreshInterval = time.Nanosecond })
	static := sha256.Sum256([]byte("an-agents-static-bearer-token-of-32-bytes"))
	// lookup is the gateway's static lookup; a miss hands the digest on.
	lookup := func(token string) ([32]byte, bool) {
		sum := sha256.Sum256([]byte(token))
		return sum, subtle.ConstantTimeCompare(sum[:], static[:]) == 1
	}
	b.Run("static-token", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := lookup("an-agents-static-bearer-token-of-32-bytes"); !ok {
				b.Fatal("no match")
			}
		}
	})
	rsaKey := is.SigningKey().Signer.(*rsa.PrivateKey)
	b.Run("RS256-signature-alone", func(b *testing.B) {
		token := is.Token("svc-a", "mcp:tools")
		dot := strings.LastIndexByte(token, '.')
		sig, err := base64.RawURLEncoding.DecodeString(token[dot+1:])
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			sum := sha256.Sum256([]byte(token[:dot]))
			if err := rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, sum[:], sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, alg := range []string{"RS256", "ES256"} {
		if alg != "RS256" {
			is.Rotate(alg)
		}
		token := is.Token("svc-a", "mcp:tools")
		if _, err := v.Verify(context.Background(), token); err != nil {
			b.Fatal(err) // the new key fetched
		}
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sum, ok := lookup(token)
				if ok {
					b.Fatal("a static token")
				}
				if _, err := v.VerifyDigest(context.Background(), token, sum); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(alg+"-first-sight", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				oauth.ForgetVerified(v)
				sum, ok := lookup(token)
				if ok {
					b.Fatal("a static token")
				}
				if _, err := v.VerifyDigest(context.Background(), token, sum); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
