package config_test

import (
	"strings"
	"testing"

	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/mcpgate"
)

// The gateway's limits from issue 11 decode, reach the stack, and are
// checked with their lines.
func TestGatewayLimits(t *testing.T) {
	base := "namespace: n\nbudget: {tokens: 100, calls: 5, call_tokens: 40}\n"
	cfg, err := config.Parse([]byte(base+"max_sessions: 100\nmax_sessions_per_agent: 7\nallow_unlisted_tools: true\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxSessionsPerAgent != 7 || !cfg.AllowUnlistedTools || cfg.Budget.CallTokens != 40 {
		t.Errorf("decoded %+v", cfg)
	}
	for listen, want := range map[string]string{":9090": "127.0.0.1:9090", "0.0.0.0:9090": "0.0.0.0:9090", "[::1]:9": "[::1]:9"} {
		if got := (config.Admin{Listen: listen}).AdminAddress(); got != want {
			t.Errorf("admin.listen %q listens on %q, want %q", listen, got, want)
		}
	}
	sc, err := cfg.StackConfig()
	if err != nil {
		t.Fatal(err)
	}
	if sc.Budget.CallTokenLimit != 40 {
		t.Errorf("the stack's CallTokenLimit = %d, want 40", sc.Budget.CallTokenLimit)
	}
	if config.DefaultMaxSessions != mcpgate.DefaultMaxSessions {
		t.Errorf("config.DefaultMaxSessions %d, the gateway's %d", config.DefaultMaxSessions, mcpgate.DefaultMaxSessions)
	}
	for _, tt := range []struct{ yaml, want string }{
		{"budget: {tokens: 100, calls: 5, call_tokens: -1}\n", "line 2: budget.call_tokens: -1 is negative"},
		{"budget: {tokens: 1, calls: 1}\nmax_sessions_per_agent: -2\n", "line 3: max_sessions_per_agent: -2 is negative"},
		{"budget: {tokens: 1, calls: 1}\nmax_sessions: 10\nmax_sessions_per_agent: 11\n", "line 4: max_sessions_per_agent: 11 is more than max_sessions (10)"},
		{"budget: {tokens: 1, calls: 1}\nmax_sessions_per_agent: 5000\n", "line 3: max_sessions_per_agent: 5000 is more than max_sessions (default 1000)"},
		{"budget: {tokens: 1, calls: 1}\nallow_unlisted_tools: maybe\n", "line 3"},
		{"budget: {tokens: 1, calls: 1}\nadmin: {listen: nowhere}\n", "line 3: admin.listen: \"nowhere\" is not host:port"},
		{"budget: {tokens: 1, calls: 1}\nlisten: 127.0.0.1:8080\nadmin: {listen: \":8080\"}\n", "admin.listen: \":8080\" is the agents' listen address too"},
	} {
		_, err := config.Parse([]byte("namespace: n\n"+tt.yaml), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.yaml, err, tt.want)
		}
	}
}
