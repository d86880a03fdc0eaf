package oauth_test

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"testing"

	"github.com/agentsec/agentsec/oauth"
)

// BenchmarkVerify measures checking an access token with the issuer's
// keys in hand, against the static-token path it sits beside (a SHA-256
// of the token and a constant-time compare, as the gateway does): the
// difference is what OAuth adds to each request. A client presents the
// same token on each request until it expires, and only its first
// presentation checks the signature (-first-sight).
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
