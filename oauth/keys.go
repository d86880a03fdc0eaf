package oauth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// maxDocumentBytes bounds the issuer's metadata and key set.
const maxDocumentBytes = 1 << 20

// A keyCache holds the issuer's signing keys, as last fetched.
//
//   - A token naming a key the set lacks makes it fetch the set again, at
//     most once per MinRefreshInterval (a flood of made-up key ids costs
//     the issuer one request per interval), while the other tokens go on
//     being checked against the keys in hand.
//   - While in use, the set is fetched again every RefreshEvery, in the
//     background: a key the issuer withdrew stops being accepted.
//   - If the issuer can't be reached, the keys in hand keep working until
//     KeysMaxAge after they were fetched; then, and before any fetch has
//     succeeded, tokens are refused with 503 (fail closed) until a fetch
//     succeeds, which tokens keep trying, once per interval.
type keyCache struct {
	cfg        Config
	issuer     string
	jwksConfig string // the configured JWKSURL, if any

	mu       sync.Mutex
	set      map[string]jose.JSONWebKey // by kid
	fetched  time.Time                  // when set was fetched
	jwksURL  string                     // discovered, or configured
	lastTry  time.Time                  // the last fetch's start
	lastErr  error                      // the last fetch's failure, if it failed
	inflight chan struct{}              // closed when the running fetch ends
	// gen counts the fetches that withdrew or changed a key: a token
	// verified under an older generation is verified again. A fetch that
	// only confirms or adds keys — an unknown kid's, say, made up by a
	// client — leaves it, and the tokens checked already, as they are.
	gen uint64
}

// current returns the generation of the keys in hand, and whether they
// are usable: fetched, and within KeysMaxAge. Tokens checked before are
// taken on its word, so it starts the routine fetch when one is due.
func (c *keyCache) current() (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	usable := c.set != nil && now.Sub(c.fetched) < c.cfg.KeysMaxAge
	if usable {
		c.refreshIfDue(now)
	}
	return c.gen, usable
}

// refreshIfDue starts a fetch in the background if the keys are
// RefreshEvery old and none ran for MinRefreshInterval. c.mu is held.
func (c *keyCache) refreshIfDue(now time.Time) {
	if now.Sub(c.fetched) >= c.cfg.RefreshEvery && c.inflight == nil && now.Sub(c.lastTry) >= c.cfg.MinRefreshInterval {
		c.lastTry = now // one background fetch, not one per token
		go c.refresh(context.Background(), true)
	}
}

func newKeyCache(cfg Config, iss Issuer) *keyCache {
	return &keyCache{cfg: cfg, issuer: iss.URL, jwksConfig: iss.JWKSURL, jwksURL: iss.JWKSURL}
}

// sameSource reports whether o fetches the same keys as c, and keeps
// them by the same rules: one may serve in the other's place.
func (c *keyCache) sameSource(o *keyCache) bool {
	return c.issuer == o.issuer && c.jwksConfig == o.jwksConfig && c.cfg.KeysMaxAge == o.cfg.KeysMaxAge &&
		c.cfg.RefreshEvery == o.cfg.RefreshEvery && c.cfg.MinRefreshInterval == o.cfg.MinRefreshInterval
}

// get returns the key kid names.
func (c *keyCache) get(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	now := c.cfg.Now()
	c.mu.Lock()
	k, known := c.set[kid]
	usable := c.set != nil && now.Sub(c.fetched) < c.cfg.KeysMaxAge
	if known && usable {
		c.refreshIfDue(now)
		c.mu.Unlock()
		return k, nil
	}
	c.mu.Unlock()

	_, err := c.refresh(ctx, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	usable = c.set != nil && c.cfg.Now().Sub(c.fetched) < c.cfg.KeysMaxAge
	if k, known := c.set[kid]; known && usable {
		return k, nil
	}
	if !usable {
		cause := c.lastErr
		if cause == nil {
			cause = err
		}
		if cause == nil {
			cause = errors.New("the keys in hand are older than keys_max_age")
		}
		return jose.JSONWebKey{}, &Error{Status: http.StatusServiceUnavailable, Cause: cause, Issuer: c.issuer,
			Description: fmt.Sprintf("the signing keys of the issuer %s can't be had; try again shortly", c.issuer)}
	}
	return jose.JSONWebKey{}, invalid(fmt.Sprintf("the token is signed with a key (kid %q) the issuer does not publish", kid))
}

// refresh fetches the key set, unless a fetch began less than
// MinRefreshInterval ago (force ignores that); a fetch already running is
// waited for instead. It reports whether a fetch ran and succeeded.
func (c *keyCache) refresh(ctx context.Context, force bool) (bool, error) {
	c.mu.Lock()
	if wait := c.inflight; wait != nil {
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.lastErr == nil, c.lastErr
	}
	if !force && !c.lastTry.IsZero() && c.cfg.Now().Sub(c.lastTry) < c.cfg.MinRefreshInterval {
		err := c.lastErr
		c.mu.Unlock()
		return false, err
	}
	done := make(chan struct{})
	c.inflight, c.lastTry = done, c.cfg.Now()
	jwksURL := c.jwksURL
	c.mu.Unlock()

	// The fetch is the cache's, not the request's: a client that hangs
	// up does not fail it for the others waiting.
	fetchCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	set, discovered, err := c.fetch(fetchCtx, jwksURL)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight = nil
	close(done)
	c.lastErr = err
	if err != nil {
		return false, err
	}
	if withdraws(c.set, set) {
		c.gen++
	}
	c.set, c.fetched, c.jwksURL = set, c.cfg.Now(), discovered
	return true, nil
}

// withdraws reports whether next lacks a key of prev, or holds another
// key or algorithm under its id.
func withdraws(prev, next map[string]jose.JSONWebKey) bool {
	for kid, p := range prev {
		n, ok := next[kid]
		if !ok || n.Algorithm != p.Algorithm {
			return true
		}
		pub, ok := p.Key.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pub.Equal(n.Key) {
			return true
		}
	}
	return false
}

// fetch discovers the key set's URL, if it is not known, and fetches the
// set.
func (c *keyCache) fetch(ctx context.Context, jwksURL string) (map[string]jose.JSONWebKey, string, error) {
	if jwksURL == "" {
		var err error
		if jwksURL, err = c.discover(ctx); err != nil {
			return nil, "", err
		}
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := getJSON(ctx, c.cfg.HTTPClient, jwksURL, &doc); err != nil {
		return nil, "", fmt.Errorf("fetching the keys at %s: %w", jwksURL, err)
	}
	set := map[string]jose.JSONWebKey{}
	for _, raw := range doc.Keys {
		var k jose.JSONWebKey
		// A key of a type or curve this server does not know is
		// skipped, not fatal: the issuer may publish keys for others.
		if err := k.UnmarshalJSON(raw); err != nil || k.KeyID == "" || !k.IsPublic() || !k.Valid() {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if _, dup := set[k.KeyID]; dup {
			// Two keys under one id: which one a token meant is
			// ambiguous, so neither is used.
			set[k.KeyID] = jose.JSONWebKey{}
			continue
		}
		set[k.KeyID] = k
	}
	for kid, k := range set {
		if k.Key == nil {
			delete(set, kid)
		}
	}
	if len(set) == 0 {
		return nil, "", fmt.Errorf("the key set at %s holds no usable signing key", jwksURL)
	}
	return set, jwksURL, nil
}

// discover reads the issuer's metadata for its key set's URL.
func (c *keyCache) discover(ctx context.Context) (string, error) {
	meta, err := discover(ctx, c.cfg.HTTPClient, c.issuer)
	if err != nil {
		return "", err
	}
	if checkURL("jwks_uri", meta.JWKSURI) != nil {
		return "", fmt.Errorf("the metadata at %s has no usable jwks_uri (%q)", meta.url, meta.JWKSURI)
	}
	return meta.JWKSURI, nil
}

// issuerMetadata is what agentsec reads of an authorization server's
// metadata.
type issuerMetadata struct {
	Issuer                string `json:"issuer"`
	JWKSURI               string `json:"jwks_uri"`
	IntrospectionEndpoint string `json:"introspection_endpoint"`
	url                   string // where it was read
}

// discover reads an issuer's metadata — OpenID Connect discovery, then
// RFC 8414. The metadata must name the issuer exactly: metadata of
// another issuer would have tokens checked against someone else's keys.
func discover(ctx context.Context, client *http.Client, issuer string) (issuerMetadata, error) {
	var failed []string
	for _, u := range metadataURLs(issuer) {
		var meta issuerMetadata
		if err := getJSON(ctx, client, u, &meta); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", u, err))
			continue
		}
		if meta.Issuer != issuer {
			return issuerMetadata{}, fmt.Errorf("the metadata at %s is for the issuer %q, not %q", u, meta.Issuer, issuer)
		}
		meta.url = u
		return meta, nil
	}
	return issuerMetadata{}, fmt.Errorf("discovering the issuer's metadata: %s", strings.Join(failed, "; "))
}

// metadataURLs are where an issuer's metadata may be: OpenID Connect
// discovery appends to the issuer's path, RFC 8414 inserts before it.
func metadataURLs(issuer string) []string {
	u, _ := url.Parse(issuer)
	path := strings.TrimSuffix(u.Path, "/")
	oidc, rfc8414 := *u, *u
	oidc.Path = path + "/.well-known/openid-configuration"
	rfc8414.Path = "/.well-known/oauth-authorization-server" + path
	return []string{oidc.String(), rfc8414.String()}
}

func getJSON(ctx context.Context, client *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readJSON(resp, v)
}

// readJSON reads a JSON answer of at most maxDocumentBytes.
func readJSON(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentBytes+1))
	if err != nil {
		return err
	}
	if len(body) > maxDocumentBytes {
		return errors.New("the document is larger than 1 MiB")
	}
	return json.Unmarshal(body, v)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
