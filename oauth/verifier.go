// Package oauth makes agentsec an OAuth 2.1 resource server, as the MCP
// authorization specification (2025-11-25) has MCP servers be: agents
// present access tokens (JWTs) their identity provider issued, and the
// Verifier checks each one — signature against the issuer's published
// keys, issuer, audience, lifetime, scopes — and names the configured
// agent it belongs to.
//
// The token says who the caller is, never what it may do: its subject (or
// client id) is mapped to an agent an operator configured, whose trust
// level the operator assigned. A token whose subject maps to no agent is
// refused, and its scopes can only narrow what the agent may do (the
// required scopes must all be granted), never raise its level.
package oauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Config configures a Verifier.
type Config struct {
	// Audience is this resource server's canonical URI (RFC 8707), which
	// a token's "aud" claim must contain.
	Audience string
	// Issuers are the authorization servers whose tokens are accepted,
	// at least one. Each names its own agents: a subject is one issuer's
	// word, never another's.
	Issuers []Issuer
	// ClockSkew is the leeway allowed on "exp", "nbf" and "iat"; 0 means
	// DefaultClockSkew.
	ClockSkew time.Duration
	// KeysMaxAge is how long fetched keys stay usable when the issuer
	// can't be reached to fetch them again; 0 means DefaultKeysMaxAge.
	KeysMaxAge time.Duration
	// RefreshEvery is how often the keys are fetched again, in the
	// background, while in use; 0 means DefaultRefreshEvery.
	RefreshEvery time.Duration
	// MinRefreshInterval bounds how often a token signed with an unknown
	// key, or an issuer that can't be reached, makes the Verifier fetch
	// the keys; 0 means DefaultMinRefreshInterval.
	MinRefreshInterval time.Duration
	// HTTPClient fetches the issuers' metadata and keys; nil means one
	// with a 10-second timeout that follows redirects only to https (or
	// loopback) URLs.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// An Issuer is an authorization server whose tokens are accepted, and
// how they name agents.
type Issuer struct {
	// URL is the issuer identifier, as its tokens' "iss" claim and its
	// metadata spell it: an https URL, or http on a loopback address for
	// tests.
	URL string
	// JWKSURL is where the issuer publishes its keys; empty means
	// discovered from its metadata (OpenID Connect discovery, then RFC
	// 8414).
	JWKSURL string
	// Scopes are the scopes each of its tokens must grant.
	Scopes []string
	// AgentClaim names the claim that identifies the caller: "sub" when
	// empty; "client_id" or "azp" for machine clients at some providers.
	AgentClaim string
	// Agents maps the claim's values to configured agents. A token whose
	// value is not here is refused.
	Agents map[string]string
	// Introspection, if set, has each of the issuer's tokens confirmed
	// active at the issuer, and may accept its opaque tokens.
	Introspection *Introspection
}

// Defaults of Config's durations.
const (
	DefaultClockSkew          = 30 * time.Second
	DefaultKeysMaxAge         = 24 * time.Hour
	DefaultRefreshEvery       = 15 * time.Minute
	DefaultMinRefreshInterval = 10 * time.Second
	// MaxTokenBytes bounds a token: a longer one is refused unread.
	MaxTokenBytes = 16 << 10
)

// An Identity is who a verified token says the caller is.
type Identity struct {
	// Agent is the configured agent the token's AgentClaim maps to.
	Agent string
	// Issuer, Subject and TokenID are the token's "iss", "sub" and "jti".
	// A token with no "jti" is named by "sha256:" and the first 16 hex
	// digits of its SHA-256, which tells it apart without revealing it.
	Issuer, Subject, TokenID string
	// ClientID is the token's "client_id", or else "azp".
	ClientID string
	// Scopes are the scopes the token grants.
	Scopes []string
	// Expires is the token's "exp".
	Expires time.Time
}

// An Error is why a token was refused, as the resource server answers:
// Status 401 with Code "invalid_token" for a token that is missing,
// malformed, forged or out of date; 403 with "insufficient_scope" for
// one that lacks a required scope; 403 with no code for a genuine token
// of a caller no agent is configured for; 503 when the issuer's keys
// can't be had. Identity is set when the token is valid, only short of a
// scope or of an agent: the refusal is then worth recording.
//
// Description is for the client; Cause, set with a 503, is what failed
// between the Verifier and the issuer (a network error, which may name
// hosts and addresses inside the operator's network): for the operator's
// log, not for the caller; Issuer is then the issuer it could not reach.
type Error struct {
	Status      int
	Code        string
	Description string
	Identity    *Identity
	Cause       error
	Issuer      string
}

// Error returns the description, and the cause if there is one.
func (e *Error) Error() string {
	if e.Cause != nil {
		return "oauth: " + e.Description + ": " + e.Cause.Error()
	}
	return "oauth: " + e.Description
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// asymmetric are the signature algorithms a token may use: public-key
// ones only, so no "none" and no HMAC keyed with a public key.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// A Verifier checks access tokens. It is safe for concurrent use.
type Verifier struct {
	cfg      Config
	issuers  []*issuer
	byURL    map[string]*issuer
	cache    verified
	unsigned *jwt.Parser // reads a token's "iss" to choose its issuer
	opaque   *issuer     // the issuer whose opaque tokens are accepted, if any

	metadataPaths []string // see MetadataPaths
}

// issuer is an accepted issuer's settings, parser and keys.
type issuer struct {
	Issuer
	parser *jwt.Parser
	keys   *keyCache
	// With Introspection: its introspector, and the checks of the claims
	// it answers for an opaque token.
	introspector *introspector
	validator    *jwt.Validator
}

// NewVerifier checks cfg and returns its Verifier. It fetches nothing
// yet: the issuers' keys are fetched when the first token comes (or by
// Prefetch), so the gateway starts while an issuer is down.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Audience == "" {
		return nil, errors.New("oauth: the audience (this server's canonical URI) is required")
	}
	if _, err := url.Parse(cfg.Audience); err != nil {
		return nil, fmt.Errorf("oauth: audience: %w", err)
	}
	if len(cfg.Issuers) == 0 {
		return nil, errors.New("oauth: no issuer is configured: name the authorization server whose tokens are accepted")
	}
	cfg.ClockSkew = orDefault(cfg.ClockSkew, DefaultClockSkew)
	cfg.KeysMaxAge = orDefault(cfg.KeysMaxAge, DefaultKeysMaxAge)
	cfg.RefreshEvery = orDefault(cfg.RefreshEvery, DefaultRefreshEvery)
	cfg.MinRefreshInterval = orDefault(cfg.MinRefreshInterval, DefaultMinRefreshInterval)
	if cfg.KeysMaxAge <= cfg.MinRefreshInterval {
		// Keys that lapsed before they could be fetched again would have
		// every token refused while the issuer is up.
		return nil, fmt.Errorf("oauth: keys_max_age %v is not longer than the least time between fetches of the keys, %v", cfg.KeysMaxAge, cfg.MinRefreshInterval)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, via []*http.Request) error {
			// A redirect to plain HTTP off loopback would let anyone on
			// the way serve the keys.
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return checkURL("redirect", r.URL.String())
		}}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	v := &Verifier{cfg: cfg, byURL: map[string]*issuer{}, unsigned: jwt.NewParser()}
	v.metadataPaths = metadataPaths(v.MetadataURL())
	for i, iss := range cfg.Issuers {
		if err := iss.Check(); err != nil {
			return nil, fmt.Errorf("oauth: issuers[%d]: %w", i, err)
		}
		if v.byURL[iss.URL] != nil {
			return nil, fmt.Errorf("oauth: issuers[%d]: the issuer %s is listed twice", i, iss.URL)
		}
		if iss.AgentClaim == "" {
			iss.AgentClaim = "sub"
		}
		iss.Scopes, iss.Agents = slices.Clone(iss.Scopes), maps.Clone(iss.Agents)
		checks := []jwt.ParserOption{
			jwt.WithIssuer(iss.URL),
			jwt.WithAudience(cfg.Audience),
			jwt.WithLeeway(cfg.ClockSkew),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(cfg.Now),
		}
		x := &issuer{Issuer: iss, keys: newKeyCache(cfg, iss), parser: jwt.NewParser(append(checks, jwt.WithValidMethods(asymmetric))...)}
		if in := iss.Introspection; in != nil {
			x.introspector, x.validator = newIntrospector(cfg, iss), jwt.NewValidator(checks...)
			if in.Opaque {
				if v.opaque != nil {
					return nil, fmt.Errorf("oauth: issuers[%d]: opaque tokens are accepted from %s already: an opaque token names no issuer, so one issuer at most may issue them", i, v.opaque.URL)
				}
				v.opaque = x
			}
		}
		v.issuers = append(v.issuers, x)
		v.byURL[iss.URL] = x
	}
	return v, nil
}

// Check reports what is wrong with an issuer's settings, if anything.
func (iss Issuer) Check() error {
	if err := checkURL("issuer", iss.URL); err != nil {
		return err
	}
	if iss.JWKSURL != "" {
		if err := checkURL("jwks_url", iss.JWKSURL); err != nil {
			return err
		}
	}
	if len(iss.Agents) == 0 {
		return errors.New("no agents are mapped: a token must name a configured agent")
	}
	if !slices.Contains(agentClaims, iss.AgentClaim) {
		return fmt.Errorf("agent_claim %q is not one of sub, client_id, azp: other claims (email, a user name) may be ones a user can set", iss.AgentClaim)
	}
	if iss.Introspection != nil {
		return iss.Introspection.Check()
	}
	return nil
}

// agentClaims are the claims that may name an agent: identifiers the
// issuer assigns, never ones its users choose ("" is "sub").
var agentClaims = []string{"", "sub", "client_id", "azp"}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// checkURL accepts https URLs, and http ones on loopback (a test's
// issuer): keys fetched over plain HTTP elsewhere could be anyone's.
func checkURL(what, raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return fmt.Errorf("%s is required", what)
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%s %q must be an https URL (http only on a loopback address)", what, raw)
}

// ShareKeys has v use prev's keys for each issuer both accept from the
// same source (issuer and jwks_url) by the same rules: a reloaded
// configuration then neither fetches them again nor keeps tokens waiting
// for them. Tokens prev verified are verified again by v, whose agents
// may differ. Call it before v is in use.
func (v *Verifier) ShareKeys(prev *Verifier) {
	if v == nil || prev == nil {
		return
	}
	for _, iss := range v.issuers {
		if old := prev.byURL[iss.URL]; old != nil && old.keys.sameSource(iss.keys) {
			iss.keys = old.keys
		}
	}
}

// Prefetch fetches the keys of each issuer that has none in hand, so that
// the first token is not kept waiting for them; an error says whose could
// not be had and why (the Verifier tries again when tokens come).
func (v *Verifier) Prefetch(ctx context.Context) error {
	errs := make([]error, len(v.issuers))
	var wg sync.WaitGroup
	for i, iss := range v.issuers {
		if _, usable := iss.keys.current(); usable {
			continue
		}
		wg.Go(func() {
			if _, err := iss.keys.refresh(ctx, true); err != nil {
				errs[i] = fmt.Errorf("the issuer %s: %w", iss.URL, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Verify checks a token and returns whose it is. A refused token's error
// is an *Error.
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	return v.VerifyDigest(ctx, token, sha256.Sum256([]byte(token)))
}

// VerifyDigest is Verify for a caller that has the token's SHA-256 in
// hand already (the gateway, from looking it up among static tokens):
// the token is not hashed again.
func (v *Verifier) VerifyDigest(ctx context.Context, token string, sum [32]byte) (Identity, error) {
	if len(token) > MaxTokenBytes {
		return Identity{}, invalid(fmt.Sprintf("the token is longer than %d bytes", MaxTokenBytes))
	}
	now := v.cfg.Now()
	if e, ok := v.cache.get(sum, now); ok {
		if e.opaque {
			e.id.Scopes = slices.Clone(e.id.Scopes)
			return e.id, nil
		}
		if gen, usable := e.issuer.keys.current(); usable && gen == e.gen {
			e.id.Scopes = slices.Clone(e.id.Scopes)
			return e.id, nil
		}
		v.cache.forget(sum)
	}
	if v.opaque != nil && strings.Count(token, ".") != 2 {
		return v.verifyOpaque(ctx, token, sum)
	}
	iss, refused := v.issuerOf(token)
	if refused != nil {
		return Identity{}, refused
	}
	// The generation is read before the check: a key set fetched during
	// it (one that withdrew the key) makes the token be checked again.
	gen, _ := iss.keys.current()
	claims := jwt.MapClaims{}
	var keyErr *Error
	_, err := iss.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		key, err := iss.key(ctx, t)
		if err != nil {
			keyErr, _ = err.(*Error)
		}
		return key, err
	})
	if keyErr != nil {
		return Identity{}, keyErr
	}
	if err != nil {
		// A token genuine but out of date, or for someone else, is
		// refused like a forgery, with no identity to record: a token
		// seen once could otherwise be replayed to fill the log for ever.
		return Identity{}, invalid(describe(err))
	}
	// The token is valid: what its claims say is the issuer's word, if
	// the issuer, asked, does not say it revoked it.
	entry := verifiedToken{issuer: iss, gen: gen}
	if in := iss.introspector; in != nil {
		if _, refused := in.introspect(ctx, token, sum); refused != nil {
			return Identity{}, refused
		}
		entry.expires = v.cfg.Now().Add(in.CacheFor)
	}
	return v.admit(sum, iss, claims, entry)
}

// admit names the agent of a token whose claims are the issuer's word,
// checks its scopes, and remembers it as verified until it expires, or
// until entry's expiry if that is set and sooner.
func (v *Verifier) admit(sum [32]byte, iss *issuer, claims jwt.MapClaims, entry verifiedToken) (Identity, error) {
	id := iss.identity(claims)
	if id.TokenID == "" {
		id.TokenID = "sha256:" + hex.EncodeToString(sum[:8])
	}
	if id.Agent == "" {
		return Identity{}, &Error{Status: http.StatusForbidden, Identity: &id,
			Description: fmt.Sprintf("no agent is configured for the token's %s %q; an operator maps it to one in auth.oauth.issuers[].agents", iss.AgentClaim, claimString(claims, iss.AgentClaim))}
	}
	if missing := missingScopes(iss.Scopes, id.Scopes); len(missing) > 0 {
		return Identity{}, &Error{Status: http.StatusForbidden, Code: "insufficient_scope", Identity: &id,
			Description: fmt.Sprintf("the token lacks the scope %s", strings.Join(missing, " "))}
	}
	entry.id = id
	if exp := id.Expires.Add(v.cfg.ClockSkew); entry.expires.IsZero() || exp.Before(entry.expires) {
		entry.expires = exp
	}
	v.cache.put(sum, entry)
	return id, nil
}

// verifyOpaque checks a token that is not a JWT by asking the issuer that
// accepts them what it is, and checks what it answers as a JWT's claims
// are: its issuer, its audience (which must be named), its lifetime.
func (v *Verifier) verifyOpaque(ctx context.Context, token string, sum [32]byte) (Identity, error) {
	if !isB64Token(token) {
		return Identity{}, invalid("the token is neither a JWT nor an opaque token (RFC 6750 b64token)")
	}
	iss := v.opaque
	claims, refused := iss.introspector.introspect(ctx, token, sum)
	if refused != nil {
		return Identity{}, refused
	}
	if _, named := claims["iss"]; !named {
		claims["iss"] = iss.URL // the answer is the issuer's own
	}
	if aud, _ := claims.GetAudience(); len(aud) == 0 {
		return Identity{}, invalid("the issuer's answer names no audience for the token, so it can't be shown to be for this resource")
	}
	if err := iss.validator.Validate(claims); err != nil {
		return Identity{}, invalid(describe(err))
	}
	return v.admit(sum, iss, claims, verifiedToken{issuer: iss, opaque: true, expires: v.cfg.Now().Add(iss.introspector.CacheFor)})
}

// isB64Token reports whether s is an RFC 6750 b64token: what a bearer
// token may be, and nothing else is sent to an issuer.
func isB64Token(s string) bool {
	s = strings.TrimRight(s, "=")
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			return false
		}
	}
	return true
}

// issuerOf chooses the issuer whose keys and settings check a token: the
// one its "iss" claim names, read before the signature is checked — the
// issuer's parser then checks the claim again with the rest.
func (v *Verifier) issuerOf(token string) (*issuer, *Error) {
	if len(v.issuers) == 1 {
		return v.issuers[0], nil
	}
	claims := jwt.MapClaims{}
	if _, _, err := v.unsigned.ParseUnverified(token, claims); err != nil {
		return nil, invalid(describe(err))
	}
	iss := v.byURL[claimString(claims, "iss")]
	if iss == nil {
		return nil, invalid(describe(jwt.ErrTokenInvalidIssuer))
	}
	return iss, nil
}

// Audience is the resource the tokens must be for.
func (v *Verifier) Audience() string { return v.cfg.Audience }

func invalid(desc string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: desc}
}

// describe says why the jwt library refused a token, in terms an agent's
// developer can act on.
func describe(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token was issued in the future (iat)"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token is from another issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token is not for this resource (aud)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "the token lacks a required claim: " + err.Error()
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the token's signature does not verify, or its algorithm is not accepted"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is not a well-formed JWT"
	}
	return "the token is not valid: " + err.Error()
}

// key returns the issuer's key a token names, if it suits the token's
// algorithm.
func (iss *issuer) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, invalid("the token names no key (kid)")
	}
	k, err := iss.keys.get(ctx, kid)
	if err != nil {
		return nil, err
	}
	alg := t.Method.Alg()
	if k.Algorithm != "" && k.Algorithm != alg {
		return nil, invalid(fmt.Sprintf("the key %q is for %s, not %s", kid, k.Algorithm, alg))
	}
	if !suits(k.Key, alg) {
		return nil, invalid(fmt.Sprintf("the key %q does not suit the algorithm %s", kid, alg))
	}
	return k.Key, nil
}

// suits reports whether a public key may verify alg's signatures.
func suits(key any, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return (strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")) && k.N.BitLen() >= 2048
	case *ecdsa.PublicKey:
		want := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}[alg]
		return want != nil && k.Curve == want
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// identity reads a verified token's claims.
func (iss *issuer) identity(c jwt.MapClaims) Identity {
	id := Identity{
		Issuer:   claimString(c, "iss"),
		Subject:  claimString(c, "sub"),
		TokenID:  claimString(c, "jti"),
		ClientID: claimString(c, "client_id"),
		Scopes:   scopes(c),
	}
	if id.ClientID == "" {
		id.ClientID = claimString(c, "azp")
	}
	if exp, err := c.GetExpirationTime(); err == nil && exp != nil {
		id.Expires = exp.Time
	}
	if value := claimString(c, iss.AgentClaim); value != "" {
		id.Agent = iss.Agents[value]
	}
	return id
}

// splitScopes splits a scope string at its spaces (0x20), the only
// separator RFC 6749 (3.3) allows: a scope with a tab, a no-break space
// or another character no scope may hold is kept whole, so that it can't
// be read as a scope the issuer did not grant.
func splitScopes(s string) []string {
	return slices.DeleteFunc(strings.Split(s, " "), func(scope string) bool { return scope == "" })
}

func claimString(c jwt.MapClaims, name string) string {
	s, _ := c[name].(string)
	return s
}

// scopes reads the granted scopes: "scope", a space-separated string (RFC
// 8693, RFC 9068), or "scp", a string or a list (Okta, Entra ID).
func scopes(c jwt.MapClaims) []string {
	if s, ok := c["scope"].(string); ok {
		return splitScopes(s)
	}
	switch scp := c["scp"].(type) {
	case string:
		return splitScopes(scp)
	case []any:
		var out []string
		for _, s := range scp {
			if s, ok := s.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func missingScopes(required, granted []string) []string {
	var missing []string
	for _, s := range required {
		if !slices.Contains(granted, s) {
			missing = append(missing, s)
		}
	}
	return missing
}
