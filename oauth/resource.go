package oauth

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// WellKnownPath is where a protected resource's metadata is served (RFC
// 9728), followed by the resource's own path, if it has one.
const WellKnownPath = "/.well-known/oauth-protected-resource"

// ResourceMetadata is a protected resource's metadata (RFC 9728), which
// tells an MCP client where to get a token for it.
type ResourceMetadata struct {
	Resource               string   `json:"resource"`
	AuthorizationServers   []string `json:"authorization_servers"`
	ScopesSupported        []string `json:"scopes_supported,omitempty"`
	BearerMethodsSupported []string `json:"bearer_methods_supported"`
	ResourceName           string   `json:"resource_name,omitempty"`
}

// Metadata is the resource server's metadata: its audience is the
// resource, its issuers the authorization servers, and the scopes they
// require those it supports.
func (v *Verifier) Metadata() ResourceMetadata {
	m := ResourceMetadata{
		Resource:               v.cfg.Audience,
		BearerMethodsSupported: []string{"header"},
		ResourceName:           "agentsec",
	}
	for _, iss := range v.issuers {
		m.AuthorizationServers = append(m.AuthorizationServers, iss.URL)
		for _, s := range iss.Scopes {
			if !slices.Contains(m.ScopesSupported, s) {
				m.ScopesSupported = append(m.ScopesSupported, s)
			}
		}
	}
	return m
}

// MetadataURL is where the metadata of the resource is served: the
// well-known path inserted between its host and its path (RFC 9728,
// section 3.1).
func (v *Verifier) MetadataURL() string {
	u, err := url.Parse(v.cfg.Audience)
	if err != nil {
		return ""
	}
	u.Path = WellKnownPath + strings.TrimSuffix(u.Path, "/")
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	return u.String()
}

// MetadataPaths are the paths a resource server answers with its
// metadata: the well-known path, alone and followed by the resource's
// path. The gateway asks on every GET, so they are worked out once.
func (v *Verifier) MetadataPaths() []string { return v.metadataPaths }

func metadataPaths(metadataURL string) []string {
	paths := []string{WellKnownPath}
	if u, err := url.Parse(metadataURL); err == nil && u.Path != WellKnownPath {
		paths = append(paths, u.Path)
	}
	return paths
}

// Challenge is the WWW-Authenticate header a refused request gets (RFC
// 6750, RFC 9728): where the metadata is, and, for a token that was
// presented, why it was refused. e is nil for a request with no token.
//
// The scopes a token needs go with it too — as the MCP authorization
// specification has a server say, so that a client asks for them the
// first time — when every issuer requires the same ones; where issuers
// differ, the metadata lists them all, and a token short of its issuer's
// is told which (insufficient_scope).
func (v *Verifier) Challenge(e *Error) string {
	var b strings.Builder
	b.WriteString(`Bearer resource_metadata=`)
	b.WriteString(strconv.Quote(v.MetadataURL()))
	if scope := v.commonScope(); scope != "" && (e == nil || e.Status == http.StatusUnauthorized) {
		b.WriteString(`, scope=`)
		b.WriteString(strconv.Quote(scope))
	}
	if e != nil && e.Code != "" {
		b.WriteString(`, error=`)
		b.WriteString(strconv.Quote(e.Code))
		b.WriteString(`, error_description=`)
		b.WriteString(strconv.Quote(quotable(e.Description)))
		if e.Code == "insufficient_scope" && e.Identity != nil && v.byURL[e.Identity.Issuer] != nil {
			b.WriteString(`, scope=`)
			b.WriteString(strconv.Quote(strings.Join(v.byURL[e.Identity.Issuer].Scopes, " ")))
		}
	}
	return b.String()
}

// commonScope is the scopes every issuer requires, space-separated, if
// they all require the same ones; else "".
func (v *Verifier) commonScope() string {
	first := v.issuers[0].Scopes
	for _, iss := range v.issuers[1:] {
		if !sameScopes(first, iss.Scopes) {
			return ""
		}
	}
	return strings.Join(first, " ")
}

// sameScopes reports whether a and b hold the same scopes, in any order.
func sameScopes(a, b []string) bool {
	for _, s := range a {
		if !slices.Contains(b, s) {
			return false
		}
	}
	for _, s := range b {
		if !slices.Contains(a, s) {
			return false
		}
	}
	return true
}

// quotable keeps to what RFC 6750 allows in error_description: printable
// ASCII but '"' and '\'.
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// ServeMetadata answers a GET of the metadata.
func (v *Verifier) ServeMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, v.Metadata())
}

func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=3600")
	w.Write(body)
}
