// Package oauthtest runs a small OAuth 2.1 authorization server on
// loopback for tests: OpenID Connect discovery, a JWKS of its own keys,
// and a token endpoint for the client-credentials grant — enough for a
// standard client to get a token and for agentsec to verify it — plus
// the means to mint the tokens an attacker would try.
package oauthtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// A Key is one of the issuer's signing keys.
type Key struct {
	ID     string
	Alg    string // RS256 or ES256
	Signer crypto.Signer
}

// A Client may get tokens by the client-credentials grant.
type Client struct {
	Secret string
	Scopes []string // the scopes it may be granted
}

// An Issuer is a running authorization server.
type Issuer struct {
	URL string // its issuer identifier
	// Audience is the "aud" of the tokens it issues when a client names
	// no resource.
	Audience string
	// TokenLifetime is how long its tokens last; 5 minutes unless set.
	TokenLifetime time.Duration

	srv *httptest.Server

	mu        sync.Mutex
	keys      []Key // published; the last signs
	clients   map[string]Client
	down      bool
	jwksHits  int
	nextKeyID int
	// Introspection (RFC 7662): the opaque tokens issued, the tokens
	// revoked, who may ask, how often they asked, and how long an answer
	// takes.
	opaque             map[string]jwt.MapClaims
	revoked            map[string]bool
	introspectionHits  int
	introspectionDelay time.Duration
	inflight, peak     int // introspection requests being answered, and their most at once
}

// Introspector is the client id and secret a resource server asks the
// issuer's introspection endpoint with.
const (
	IntrospectorID     = "agentsec-gateway"
	IntrospectorSecret = "introspection-secret"
)

// NewIssuer starts an issuer with one RS256 key, issuing tokens for
// audience. Close stops it.
func NewIssuer(audience string) *Issuer {
	is := &Issuer{Audience: audience, TokenLifetime: 5 * time.Minute, clients: map[string]Client{},
		opaque: map[string]jwt.MapClaims{}, revoked: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", is.serveMetadata)
	mux.HandleFunc("GET /jwks", is.serveJWKS)
	mux.HandleFunc("POST /token", is.serveToken)
	mux.HandleFunc("POST /introspect", is.serveIntrospection)
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		// Discovery documents must name an authorization endpoint; this
		// issuer has no users to sign in, only clients.
		tokenError(w, "unsupported_response_type")
	})
	is.srv = httptest.NewServer(mux)
	is.URL = is.srv.URL
	is.Rotate("RS256")
	return is
}

// Close stops the issuer.
func (is *Issuer) Close() { is.srv.Close() }

// AddClient registers a client for the client-credentials grant.
func (is *Issuer) AddClient(id string, c Client) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.clients[id] = c
}

// Rotate adds a new key of the algorithm (RS256 or ES256), which signs
// from now on; the old ones stay published until Retire.
func (is *Issuer) Rotate(alg string) Key {
	var signer crypto.Signer
	var err error
	switch alg {
	case "RS256":
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		panic("oauthtest: no key for " + alg)
	}
	if err != nil {
		panic(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.nextKeyID++
	k := Key{ID: fmt.Sprintf("key-%d", is.nextKeyID), Alg: alg, Signer: signer}
	is.keys = append(is.keys, k)
	return k
}

// Retire stops publishing a key.
func (is *Issuer) Retire(id string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = slices.DeleteFunc(is.keys, func(k Key) bool { return k.ID == id })
}

// SigningKey is the key that signs now.
func (is *Issuer) SigningKey() Key {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[len(is.keys)-1]
}

// SetDown makes every endpoint answer 503, as an issuer that is down.
func (is *Issuer) SetDown(down bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.down = down
}

// JWKSHits counts the fetches of the key set.
func (is *Issuer) JWKSHits() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.jwksHits
}

// Claims are a token's claims with those an issuer sets filled in.
func (is *Issuer) Claims(sub string, scopes ...string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss": is.URL, "sub": sub, "aud": is.Audience, "client_id": sub,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(is.TokenLifetime).Unix(),
		"jti": rand.Text(), "scope": strings.Join(scopes, " "),
	}
}

// Sign signs claims with key, as the issuer would.
func Sign(claims jwt.MapClaims, key Key) string {
	method := jwt.GetSigningMethod(key.Alg)
	t := jwt.NewWithClaims(method, claims)
	t.Header["kid"] = key.ID
	s, err := t.SignedString(key.Signer)
	if err != nil {
		panic(err)
	}
	return s
}

// Unsigned returns claims as a token with the algorithm "none" under the
// key id kid: no signature at all.
func Unsigned(claims jwt.MapClaims, kid string) string {
	t := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
	t.Header["kid"] = kid
	s, err := t.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		panic(err)
	}
	return s
}

// HMACWithPublicKey returns claims signed with HS256 keyed with the bytes
// of key's public key (its DER encoding), under key's id: a verifier
// that let the token choose the algorithm would check it with that key,
// which anyone can fetch, and find it good.
func HMACWithPublicKey(claims jwt.MapClaims, key Key) string {
	public, err := x509.MarshalPKIXPublicKey(key.Signer.Public())
	if err != nil {
		panic(err)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	t.Header["kid"] = key.ID
	s, err := t.SignedString(public)
	if err != nil {
		panic(err)
	}
	return s
}

// Token issues a token for sub with scopes, signed with the current key.
func (is *Issuer) Token(sub string, scopes ...string) string {
	return Sign(is.Claims(sub, scopes...), is.SigningKey())
}

func (is *Issuer) unavailable(w http.ResponseWriter) bool {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.down {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}
	return is.down
}

func (is *Issuer) serveMetadata(w http.ResponseWriter, r *http.Request) {
	if is.unavailable(w) {
		return
	}
	writeJSON(w, map[string]any{
		"issuer":                                is.URL,
		"jwks_uri":                              is.URL + "/jwks",
		"token_endpoint":                        is.URL + "/token",
		"introspection_endpoint":                is.URL + "/introspect",
		"authorization_endpoint":                is.URL + "/authorize",
		"grant_types_supported":                 []string{"client_credentials"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		// Clients (the Go SDK's among them) refuse a server without PKCE
		// even for this grant; every real provider offers it. Here it
		// would apply to an authorization endpoint that refuses all.
		"code_challenge_methods_supported": []string{"S256"},
	})
}

func (is *Issuer) serveJWKS(w http.ResponseWriter, r *http.Request) {
	if is.unavailable(w) {
		return
	}
	is.mu.Lock()
	is.jwksHits++
	var set jose.JSONWebKeySet
	for _, k := range is.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Signer.Public(), KeyID: k.ID, Algorithm: k.Alg, Use: "sig"})
	}
	is.mu.Unlock()
	writeJSON(w, set)
}

// serveToken is the client-credentials grant (RFC 6749, section 4.4),
// with the resource parameter (RFC 8707) setting the audience.
func (is *Issuer) serveToken(w http.ResponseWriter, r *http.Request) {
	if is.unavailable(w) {
		return
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "client_credentials" {
		tokenError(w, "unsupported_grant_type")
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	is.mu.Lock()
	c, known := is.clients[id]
	is.mu.Unlock()
	if !known || c.Secret != secret {
		w.WriteHeader(http.StatusUnauthorized)
		writeJSON(w, map[string]string{"error": "invalid_client"})
		return
	}
	var granted []string
	for _, s := range strings.Fields(r.PostForm.Get("scope")) {
		if !slices.Contains(c.Scopes, s) {
			tokenError(w, "invalid_scope")
			return
		}
		granted = append(granted, s)
	}
	if r.PostForm.Get("scope") == "" {
		granted = c.Scopes
	}
	claims := is.Claims(id, granted...)
	if resource := r.PostForm.Get("resource"); resource != "" {
		claims["aud"] = resource
	}
	writeJSON(w, map[string]any{
		"access_token": Sign(claims, is.SigningKey()),
		"token_type":   "Bearer",
		"expires_in":   int(is.TokenLifetime.Seconds()),
		"scope":        strings.Join(granted, " "),
	})
}

// OpaqueToken issues an opaque token (a random string only the issuer
// can read) with claims.
func (is *Issuer) OpaqueToken(claims jwt.MapClaims) string {
	token := "opaque-" + rand.Text()
	is.mu.Lock()
	defer is.mu.Unlock()
	is.opaque[token] = claims
	return token
}

// Revoke has the issuer call a token inactive from now on.
func (is *Issuer) Revoke(token string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.revoked[token] = true
}

// IntrospectionHits counts the requests to the introspection endpoint.
func (is *Issuer) IntrospectionHits() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.introspectionHits
}

// PeakIntrospections is the most introspection requests it answered at
// once.
func (is *Issuer) PeakIntrospections() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.peak
}

// SetIntrospectionDelay makes each introspection answer wait d.
func (is *Issuer) SetIntrospectionDelay(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.introspectionDelay = d
}

// serveIntrospection answers whether a token is active (RFC 7662): an
// opaque token it issued, or a JWT it signed, neither revoked nor
// expired; with the token's claims if so.
func (is *Issuer) serveIntrospection(w http.ResponseWriter, r *http.Request) {
	if is.unavailable(w) {
		return
	}
	if id, secret, ok := r.BasicAuth(); !ok || id != IntrospectorID || secret != IntrospectorSecret {
		w.WriteHeader(http.StatusUnauthorized)
		writeJSON(w, map[string]string{"error": "invalid_client"})
		return
	}
	token := r.PostFormValue("token")
	is.mu.Lock()
	is.introspectionHits++
	is.inflight++
	is.peak = max(is.peak, is.inflight)
	delay := is.introspectionDelay
	claims, opaque := is.opaque[token]
	revoked := is.revoked[token]
	keys := slices.Clone(is.keys)
	is.mu.Unlock()
	defer func() {
		is.mu.Lock()
		is.inflight--
		is.mu.Unlock()
	}()
	time.Sleep(delay)
	if !opaque {
		parsed, err := jwt.Parse(token, func(t *jwt.Token) (any, error) {
			for _, k := range keys {
				if k.ID == t.Header["kid"] {
					return k.Signer.Public(), nil
				}
			}
			return nil, errors.New("unknown key")
		}, jwt.WithValidMethods([]string{"RS256", "ES256"}))
		if err == nil {
			claims = parsed.Claims.(jwt.MapClaims)
		}
	}
	if claims == nil || revoked {
		writeJSON(w, map[string]bool{"active": false})
		return
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil && !time.Now().Before(exp.Time) {
		writeJSON(w, map[string]bool{"active": false})
		return
	}
	answer := map[string]any{"active": true, "token_type": "Bearer"}
	for k, v := range claims {
		answer[k] = v
	}
	writeJSON(w, answer)
}

func tokenError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
