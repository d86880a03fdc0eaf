package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Introspection has an issuer confirm its tokens at its introspection
// endpoint (RFC 7662): that a token is still active — not revoked before
// its expiry — and, for an opaque token, what it says.
type Introspection struct {
	// URL is the issuer's introspection endpoint; empty means the
	// introspection_endpoint of its metadata.
	URL string
	// ClientID and ClientSecret authenticate agentsec to the endpoint
	// (HTTP Basic, client_secret_basic), as the issuer's client.
	ClientID, ClientSecret string
	// Opaque accepts tokens that are not JWTs, which only the issuer can
	// read. At most one issuer may: an opaque token does not say whose it
	// is, and is never sent to any issuer but this one.
	Opaque bool
	// CacheFor is how long an answer holds: a token the issuer revokes is
	// refused within it. 0 means DefaultIntrospectionCache.
	CacheFor time.Duration
}

// Defaults and bounds of introspection.
const (
	DefaultIntrospectionCache = time.Minute
	// MaxIntrospections bounds the introspection requests in flight to
	// one issuer: past it, a token not yet confirmed is refused with 503
	// rather than queued, so that a flood of made-up tokens can't be
	// turned into a flood of requests to the issuer.
	MaxIntrospections = 16
	// inactiveFor is how long a token the issuer called inactive, or an
	// opaque one it did not know, is refused without asking again.
	inactiveFor = time.Minute
	// maxInactive bounds the tokens remembered as inactive.
	maxInactive = 10_000
)

// Check reports what is wrong with introspection settings, if anything.
func (in *Introspection) Check() error {
	switch {
	case in.ClientID == "" || in.ClientSecret == "":
		return errors.New("introspection needs the client id and secret agentsec authenticates with")
	case in.CacheFor < 0:
		return errors.New("introspection: the cache time is negative")
	case in.URL != "":
		return checkURL("introspection url", in.URL)
	}
	return nil
}

// An introspector asks one issuer about its tokens.
type introspector struct {
	Introspection
	issuer string
	client *http.Client
	now    func() time.Time

	slots chan struct{} // one per request in flight

	mu       sync.Mutex
	endpoint string                 // configured, or discovered once
	inactive map[[32]byte]time.Time // tokens refused, until when
}

func newIntrospector(cfg Config, iss Issuer) *introspector {
	in := iss.Introspection
	if in.CacheFor <= 0 {
		in.CacheFor = DefaultIntrospectionCache
	}
	return &introspector{Introspection: *in, issuer: iss.URL, client: cfg.HTTPClient, now: cfg.Now,
		endpoint: in.URL, slots: make(chan struct{}, MaxIntrospections), inactive: map[[32]byte]time.Time{}}
}

// introspect asks whether token is active, and returns what the issuer
// says of it: its claims, or a refusal — 401 for a token it does not
// call active, 503 when it can't be asked.
// sum is the token's SHA-256.
func (in *introspector) introspect(ctx context.Context, token string, sum [32]byte) (jwt.MapClaims, *Error) {
	in.mu.Lock()
	until, known := in.inactive[sum]
	in.mu.Unlock()
	if known && in.now().Before(until) {
		return nil, invalid("the issuer says the token is not active (revoked, expired or not its own)")
	}
	select {
	case in.slots <- struct{}{}:
		defer func() { <-in.slots }()
	default:
		return nil, &Error{Status: http.StatusServiceUnavailable,
			Description: fmt.Sprintf("too many tokens are being confirmed with the issuer %s at once; try again shortly", in.issuer)}
	}
	// The request is the Verifier's, not the client's: a client that
	// hangs up does not make the token look inactive.
	ask, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	claims, err := in.ask(ask, token)
	if err != nil {
		return nil, &Error{Status: http.StatusServiceUnavailable, Cause: err, Issuer: in.issuer,
			Description: fmt.Sprintf("the issuer %s could not be asked whether the token is active; try again shortly", in.issuer)}
	}
	if active, _ := claims["active"].(bool); !active {
		in.forget(sum)
		return nil, invalid("the issuer says the token is not active (revoked, expired or not its own)")
	}
	return claims, nil
}

// forget remembers a token as inactive for inactiveFor.
func (in *introspector) forget(sum [32]byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.now()
	if len(in.inactive) >= maxInactive {
		for k, until := range in.inactive {
			if !now.Before(until) || len(in.inactive) >= maxInactive {
				delete(in.inactive, k)
			}
		}
	}
	in.inactive[sum] = now.Add(inactiveFor)
}

// ask posts the token to the endpoint.
func (in *introspector) ask(ctx context.Context, token string) (jwt.MapClaims, error) {
	endpoint, err := in.endpointURL(ctx)
	if err != nil {
		return nil, err
	}
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// RFC 6749, section 2.3.1: the id and secret form-encoded first.
	req.SetBasicAuth(url.QueryEscape(in.ClientID), url.QueryEscape(in.ClientSecret))
	resp, err := in.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	claims := jwt.MapClaims{}
	if err := readJSON(resp, &claims); err != nil {
		return nil, fmt.Errorf("introspection at %s: %w", endpoint, err)
	}
	return claims, nil
}

// endpointURL is the configured endpoint, or the one the issuer's
// metadata names, read once.
func (in *introspector) endpointURL(ctx context.Context) (string, error) {
	in.mu.Lock()
	endpoint := in.endpoint
	in.mu.Unlock()
	if endpoint != "" {
		return endpoint, nil
	}
	meta, err := discover(ctx, in.client, in.issuer)
	if err != nil {
		return "", err
	}
	if err := checkURL("introspection_endpoint", meta.IntrospectionEndpoint); err != nil {
		return "", fmt.Errorf("the metadata at %s names no usable introspection endpoint: %w", meta.url, err)
	}
	in.mu.Lock()
	in.endpoint = meta.IntrospectionEndpoint
	in.mu.Unlock()
	return meta.IntrospectionEndpoint, nil
}
