package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/config"
)

// The bounds on serve's connections decode, and bad ones are refused with
// their line.
func TestConnectionLimits(t *testing.T) {
	base := "namespace: n\nbudget: {tokens: 10, calls: 10}\n"
	cfg, err := config.Parse([]byte(base+`max_connections: 500
max_connections_per_address: 50
connection_idle_timeout: 90s
request_body_timeout: 10s
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConnections != 500 || cfg.MaxConnectionsPerAddress != 50 ||
		cfg.ConnectionIdleTimeout != 90*time.Second || cfg.RequestBodyTimeout != 10*time.Second {
		t.Errorf("decoded %+v", cfg)
	}
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"negative max", "max_connections: -1\n", "line 3: max_connections: -1 is negative"},
		{"negative per address", "max_connections_per_address: -2\n", "line 3: max_connections_per_address: -2 is negative"},
		{"per address over max", "max_connections: 10\nmax_connections_per_address: 11\n",
			"line 4: max_connections_per_address: 11 is more than max_connections (10)"},
		{"per address over default max", "max_connections_per_address: 5000\n",
			"line 3: max_connections_per_address: 5000 is more than max_connections (default 4096)"},
		{"negative idle", "connection_idle_timeout: -1s\n", "line 3: connection_idle_timeout: -1s is negative"},
		{"idle too short", "connection_idle_timeout: 100ms\n", "line 3: connection_idle_timeout: 100ms is less than a second"},
		{"negative body", "request_body_timeout: -1m\n", "line 3: request_body_timeout: -1m0s is negative"},
		{"body too short", "request_body_timeout: 500ms\n", "line 3: request_body_timeout: 500ms is less than a second"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(base+tt.yaml), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error:\n%v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}
