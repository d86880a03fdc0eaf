package oauth_test

import (
	"slices"
	"testing"

	"github.com/agentsec/agentsec/oauth"
)

// Scopes are separated by spaces (0x20) alone, as RFC 6749 says: a
// granted scope holding a tab or a no-break space stays one scope, and
// can't be read as a scope the issuer did not grant.
func TestScopesSplitAtSpacesOnly(t *testing.T) {
	for _, c := range []struct {
		claims map[string]any
		want   []string
	}{
		{map[string]any{"scope": "mcp:tools  openid "}, []string{"mcp:tools", "openid"}},
		{map[string]any{"scope": "evil\u00a0mcp:tools"}, []string{"evil\u00a0mcp:tools"}},
		{map[string]any{"scope": "evil\tmcp:tools"}, []string{"evil\tmcp:tools"}},
		{map[string]any{"scp": "evil\u0085mcp:tools"}, []string{"evil\u0085mcp:tools"}},
		{map[string]any{"scp": []any{"mcp:tools", 7}}, []string{"mcp:tools"}},
	} {
		if got := oauth.Scopes(c.claims); !slices.Equal(got, c.want) {
			t.Errorf("scopes of %q = %q, want %q", c.claims, got, c.want)
		}
	}
}
