// Package bearer reads the bearer token of an HTTP request, for the
// gateway and the decision API alike.
package bearer

import (
	"net/http"
	"strings"
)

// Token returns the token of r's "Authorization: Bearer <token>" header,
// and whether it has one. The scheme is case-insensitive (RFC 9110,
// 11.1); the token is what follows the spaces after it.
func Token(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimLeft(token, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}
