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

	"github.com/agentsec/agentsec/oauth"
)

// BenchmarkVerify measures checking an access token with the issuer's
// keys in hand, against the static-token path it sits beside (a SHA-256
// of the token and a constant-time compare, as the gateway does): the
// difference is what OAuth adds to each request. A client presents the
// same token on each request until it expires, and only its first
// presentation checks the signature (-first-sight), whose floor is the
// signature check alone (RS256-signature-alone: rsa.VerifyPKCS1v15 of the
// token's SHA-256).
func BenchmarkVerify(b *testing.B) {
	is, v := setup(b, nil)
	b.Run("static-token", func(b *testing.B) {
		token := "an-agents-static-bearer-token-of-32-bytes"
		want := sha256.Sum256([]byte(token))
		b.ReportAllocs()
		for b.Loop() {
			sum := sha256.Sum256([]byte(token))
			if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
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
		if err := v.Prefetch(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), token); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(alg+"-first-sight", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				oauth.ForgetVerified(v)
				if _, err := v.Verify(context.Background(), token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
