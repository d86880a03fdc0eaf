package config_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/config"
)

// exampleDir copies the example configuration and its key to a fresh
// directory, so that the audit database it names is created there.
func exampleDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"agentsec.yaml", "demo.key"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "anchor"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestExample(t *testing.T) {
	dir := exampleDir(t)
	cfg, err := config.Load(filepath.Join(dir, "agentsec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Namespace != "my-gateway" || len(cfg.Trust.Rules) != 3 || len(cfg.Trust.Agents) != 3 ||
		cfg.Audit.CheckpointInterval != 10*time.Second || len(cfg.Upstreams) != 2 ||
		cfg.Upstreams[0].Args[1] != "@modelcontextprotocol/server-filesystem" || cfg.Upstreams[1].URL != "http://127.0.0.1:9000/mcp" || cfg.Upstreams[1].Timeout != 30*time.Second ||
		cfg.MaxSessions != 1000 || cfg.SessionIdleTimeout != 30*time.Minute {
		t.Errorf("decoded %+v", cfg)
	}
	sc, err := cfg.StackConfig()
	if err != nil {
		t.Fatal(err)
	}
	if sc.Audit.Path != filepath.Join(dir, "audit.db") || sc.Audit.SignerKey == "" {
		t.Errorf("audit path %q, key set %v; want the path resolved beside the file and the key read",
			sc.Audit.Path, sc.Audit.SignerKey != "")
	}
	stack, err := agentsec.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	for _, tc := range []struct {
		req  agentsec.Request
		want bool
	}{
		{agentsec.Request{Agent: "claude-desktop", Tool: "fs__write_file"}, true},
		{agentsec.Request{Agent: "ci-bot", Tool: "fs__write_file"}, false},
		{agentsec.Request{Agent: "ci-bot", Tool: "search__query", Scope: "release"}, true},
		{agentsec.Request{Agent: "claude-desktop", Tool: "unknown"}, false},
	} {
		if d := stack.TrustGate.Check(tc.req); d.Allowed != tc.want {
			t.Errorf("Check(%+v) = %v, want allowed %v", tc.req, d, tc.want)
		}
	}
	err = stack.Guard(context.Background(), agentsec.Request{Agent: "claude-desktop", Session: "s", Tool: "fs__read_file"},
		func(context.Context) (int64, error) { return 1, nil })
	if err != nil {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	dir := exampleDir(t)
	if err := os.WriteFile(filepath.Join(dir, "demo.pub"), []byte("config-test+12345678+AAAA\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := `namespace: n
budget: {tokens: 10, calls: 10}
`
	oauthAuth := base + "trust:\n  agents:\n    - {id: a, level: public}\nauth:\n  oauth:\n    "
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", ``, "line 1: the configuration is empty"},
		{"unknown key", "namespace: n\nbudgets: {}\n", `line 2: unknown key "budgets" in Config`},
		{"unknown nested key", base + "trust:\n  rulez: []\n", `line 4: unknown key "rulez" in Trust`},
		{"wrong type", base + "listen: [1]\n", "line 3: cannot unmarshal"},
		{"two documents", base + "---\nnamespace: m\n", "only one YAML document"},
		{"no namespace", "budget: {tokens: 1, calls: 1}\n", "namespace: is required"},
		{"zero calls", "namespace: n\nbudget: {tokens: 10}\n", "line 2: budget: call limit must be positive"},
		{"unknown ladder", base + "trust:\n  ladder: nine\n", `line 4: trust.ladder: no built-in ladder "nine"`},
		{"custom ladder repeats", base + "trust:\n  ladder: [a, b, a]\n", `lists level "a" twice`},
		{"rule level", base + "trust:\n  rules:\n    - {tool: x, level: admin}\n", `line 5: trust.rules[0]: for tool "x": unknown trust level "admin"`},
		{"bad pattern", base + "trust:\n  rules:\n    - {tool: \"fs.[a\", level: public}\n", "line 5: trust.rules[0]: pattern"},
		{"duplicate rule", base + "trust:\n  rules:\n    - {tool: x, level: public}\n    - {tool: x, level: verified}\n", `line 6: trust.rules[1].tool: tool "x" has a rule already`},
		{"default level", base + "trust:\n  default_level: top\n", "trust.default_level: default level"},
		{"agent level", base + "trust:\n  agents:\n    - {id: a, level: root}\n", `line 5: trust.agents[0].level: unknown trust level "root"`},
		{"agent without id", base + "trust:\n  agents:\n    - {level: public}\n", "trust.agents[0]: assignment has an empty agent id"},
		{"duplicate agent", base + "trust:\n  agents:\n    - {id: a, level: public}\n    - {id: a, level: verified}\n", `line 6: trust.agents[1].id: agent "a" is assigned twice`},
		{"expired", base + "trust:\n  agents:\n    - {id: a, level: public, expires: 2001-01-01T00:00:00Z}\n", "which has passed"},
		{"bad token", base + "trust:\n  agents:\n    - {id: a, level: public, token_sha256: abc}\n", "token_sha256: is not a SHA-256"},
		{"operator role", base + "operators:\n  - {id: o, role: root, token_sha256: " + strings.Repeat("cd", 32) + "}\n", `line 4: operators[0].role: "root" is not a role`},
		{"operator without id", base + "operators:\n  - {role: admin, token_sha256: " + strings.Repeat("cd", 32) + "}\n", "operators[0].id: is required"},
		{"operator twice", base + "operators:\n  - {id: o, role: admin, token_sha256: " + strings.Repeat("cd", 32) + "}\n  - {id: o, role: auditor, token_sha256: " + strings.Repeat("ef", 32) + "}\n", `operator "o" is configured twice`},
		{"operator with an agent's token", base + "trust:\n  agents:\n    - {id: a, level: public, token_sha256: " + strings.Repeat("ab", 32) + "}\noperators:\n  - {id: o, role: admin, token_sha256: " + strings.Repeat("ab", 32) + "}\n", `operators[0].token_sha256: is agent "a"'s token too`},
		{"operator token", base + "operators:\n  - {id: o, role: admin, token_sha256: xyz}\n", "operators[0].token_sha256: is not a SHA-256"},
		{"shared token", base + "trust:\n  agents:\n    - {id: a, level: public, token_sha256: " + strings.Repeat("ab", 32) + "}\n    - {id: b, level: public, token_sha256: " + strings.Repeat("ab", 32) + "}\n", `is agent "a"'s token too`},
		{"path without key", base + "audit:\n  path: a.db\n", "audit.key_file: is required with audit.path"},
		{"missing key file", base + "audit:\n  path: a.db\n  key_file: nope.key\n", "no such file"},
		{"public key as key", base + "audit:\n  path: a.db\n  key_file: demo.pub\n", "not a signer key"},
		{"checkpoint file without log", base + "audit:\n  checkpoint_file: x\n", "audit.checkpoint_file: needs a durable log"},
		{"postgres and path", base + "audit:\n  path: a.db\n  key_file: demo.key\npostgres:\n  url: postgres://db/agentsec\n", "audit.path: and postgres.url both"},
		{"postgres without key", base + "postgres:\n  url: postgres://db/agentsec\n", "audit.key_file: is required with postgres.url"},
		{"postgres bad url", base + "audit:\n  key_file: demo.key\npostgres:\n  url: \"postgres://u@[::1\"\n", "postgres.url: is not a PostgreSQL connection string"},
		{"postgres password", base + "audit:\n  key_file: demo.key\npostgres:\n  url: postgres://u:hunter2@db/agentsec\n", "postgres.url: holds a password"},
		{"postgres password in query", base + "audit:\n  key_file: demo.key\npostgres:\n  url: postgres://u@db/agentsec?password=hunter2\n", "postgres.url: holds a password"},
		{"postgres password setting", base + "audit:\n  key_file: demo.key\npostgres:\n  url: host=db user=u password=hunter2\n", "postgres.url: holds a password"},
		{"listen", base + "listen: localhost\n", `listen: "localhost" is not host:port`},
		{"listen everywhere", base + "listen: \":8080\"\n", "listens on every interface"},
		{"negative sessions", base + "max_sessions: -1\n", "line 3: max_sessions: -1 is negative"},
		{"negative idle timeout", base + "session_idle_timeout: -5m\n", "line 3: session_idle_timeout: -5m0s is negative"},
		{"stdio agent", base + "stdio_agent: ghost\n", `stdio_agent: agent "ghost" is not among trust.agents`},
		{"upstream neither", base + "upstreams:\n  - name: a\n", "upstreams[0]: needs a command"},
		{"upstream both", base + "upstreams:\n  - {name: a, command: x, url: \"http://h/\"}\n", "has both a command and a url"},
		{"upstream url", base + "upstreams:\n  - {name: a, url: \"ftp://h/\"}\n", `upstreams[0].url: "ftp://h/" is not an http`},
		{"upstream name", base + "upstreams:\n  - {name: \"a b\", command: x}\n", `upstreams[0].name: "a b" must be`},
		{"upstream name with separator", base + "upstreams:\n  - {name: a__b, command: x}\n", `upstreams[0].name: "a__b" must be`},
		{"upstream timeout", base + "upstreams:\n  - {name: a, command: x, timeout: -1s}\n", `upstreams[0].timeout: -1s is negative`},
		{"bare rule, several upstreams", base + "trust:\n  rules:\n    - {tool: \"read_*\", level: public}\nupstreams:\n  - {name: a, command: x}\n  - {name: b, command: y}\n",
			`line 5: trust.rules[0].tool: "read_*" matches no tool: in front of several upstreams, tools are named <upstream>__<tool>, such as "a__read_*"`},
		{"upstream twice", base + "upstreams:\n  - {name: a, command: x}\n  - {name: a, command: y}\n", `line 5: upstreams[1].name: "a" names another upstream`},
		{"oauth issuer over http", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: http://idp.example.com, agents: {c: a}}]\n", `auth.oauth.issuers[0]: issuer "http://idp.example.com" must be an https URL`},
		{"oauth no issuers", oauthAuth + "audience: https://m.example/mcp\n", "auth.oauth.issuers: is required"},
		{"oauth issuer twice", oauthAuth + "audience: https://m.example/mcp\n    issuers:\n      - {issuer: https://idp.example.com, agents: {c: a}}\n      - {issuer: https://idp.example.com, agents: {d: a}}\n", `line 11: auth.oauth.issuers[1].issuer: https://idp.example.com is listed twice`},
		{"oauth no audience", oauthAuth + "issuers: [{issuer: https://idp.example.com, agents: {c: a}}]\n", "auth.oauth.audience: is required"},
		{"oauth relative audience", oauthAuth + "audience: /mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}}]\n", `auth.oauth.audience: "/mcp" is not this server's canonical URI`},
		{"oauth no agents", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com}]\n", "auth.oauth.issuers[0]: no agents are mapped"},
		{"oauth unknown agent", oauthAuth + "audience: https://m.example/mcp\n    issuers:\n      - issuer: https://idp.example.com\n        agents: {c: ghost}\n", `line 11: auth.oauth.issuers[0].agents.c: agent "ghost" is not among trust.agents`},
		{"oauth bad scope", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}, scopes: [\"a b\"]}]\n", `auth.oauth.issuers[0].scopes[0]: "a b" is not a scope token`},
		{"oauth skew", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}}]\n    clock_skew: 1h\n", "auth.oauth.clock_skew: 1h0m0s is outside 0 to 5m"},
		{"oauth introspection without a secret", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}, introspection: {client_id: gw}}]\n", "auth.oauth.issuers[0]: introspection.client_secret_file is required"},
		{"oauth introspection secret missing", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}, introspection: {client_id: gw, client_secret_file: nowhere.secret}}]\n", "auth.oauth.issuers[0]: introspection.client_secret_file: open"},
		{"oauth two issuers of opaque tokens", oauthAuth + "audience: https://m.example/mcp\n    issuers:\n      - {issuer: https://a.example.com, agents: {c: a}, introspection: {client_id: gw, client_secret_file: demo.key, opaque_tokens: true}}\n      - {issuer: https://b.example.com, agents: {c: a}, introspection: {client_id: gw, client_secret_file: demo.key, opaque_tokens: true}}\n", "auth.oauth.issuers[1].introspection.opaque_tokens: issuers[0] accepts opaque tokens already"},
		{"oauth keys lapse too soon", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}}]\n    keys_max_age: 5s\n", "auth.oauth.keys_max_age: 5s is less than 15m0s"},
		{"oauth agent claim a user sets", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}, agent_claim: email}]\n", `agent_claim "email" is not one of sub, client_id, azp`},
		{"oauth key", oauthAuth + "audience: https://m.example/mcp\n    issuers: [{issuer: https://idp.example.com, agents: {c: a}, keyz: x}]\n", `unknown key "keyz" in OAuthIssuer`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.yaml), dir)
			if err == nil {
				t.Fatalf("Parse succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error:\n%s\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// Every problem is reported, each on its own line.
func TestAllProblemsReported(t *testing.T) {
	_, err := config.Parse([]byte("budget: {tokens: 0, calls: 1}\nlisten: nowhere\n"), t.TempDir())
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 {
		t.Errorf("got %d problems, want 3 (namespace, budget, listen):\n%s", len(lines), err)
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentsec.yaml")
	if err := os.WriteFile(path, []byte("namespace: n\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+": line 2:") {
		t.Errorf("Load error = %v, want it to start with the path and line", err)
	}
	if _, err := config.Load(filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
}

func FuzzParse(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("testdata", "agentsec.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("namespace: n\nbudget: {tokens: 1, calls: 1}\n"))
	f.Add([]byte("trust:\n  ladder: [a, b]\n  rules: [{tool: '*', level: b}]\n"))
	f.Add([]byte("namespace: n\nbudget: {tokens: 1, calls: 1}\npostgres: {url: 'postgres://u@h:5432/d?sslmode=disable'}\n"))
	f.Add([]byte("namespace: n\nbudget: {tokens: 1, calls: 1}\npostgres: {url: 'host=h user=u password=p'}\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("{"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse(data, dir)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error message")
			}
			return
		}
		if cfg.Namespace == "" || cfg.Budget.Calls <= 0 || cfg.Budget.Tokens <= 0 {
			t.Errorf("accepted a configuration that should fail validation: %+v", cfg)
		}
		if cfg.Postgres.URL != "" && (cfg.Audit.KeyFile == "" || cfg.Audit.Path != "") {
			t.Errorf("accepted postgres.url with audit.path, or without audit.key_file: %+v", cfg)
		}
	})
}

// A file's Version follows its bytes; RestartNeeded names the settings a
// reload can't take, and not the ones it can.
func TestVersionAndRestartNeeded(t *testing.T) {
	base := `namespace: ns
trust:
  rules: [{tool: read, level: public}]
  agents: [{id: a, level: public, token_sha256: ` + strings.Repeat("ab", 32) + `}]
budget: {tokens: 10, calls: 10}
listen: 127.0.0.1:8080
`
	parse := func(s string) *config.Config {
		t.Helper()
		c, err := config.Parse([]byte(s), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := parse(base)
	if v := a.Version(); !strings.HasPrefix(v, "sha256:") || len(v) != len("sha256:")+16 || v != parse(base).Version() {
		t.Errorf("version %q", v)
	}
	if parse(base+"\n").Version() == a.Version() {
		t.Error("two files of different bytes have one version")
	}
	for name, tt := range map[string]struct {
		edit string
		want string
	}{
		"rule":     {strings.Replace(base, "level: public}]\n  agents", "level: verified}]\n  agents", 1), ""},
		"operator": {base + "operators: [{id: o, role: admin, token_sha256: " + strings.Repeat("cd", 32) + "}]\n", ""},
		"budget":   {strings.Replace(base, "calls: 10", "calls: 11", 1), "budget"},
		"listen":   {strings.Replace(base, "8080", "8081", 1), "listen"},
		"both":     {strings.Replace(strings.Replace(base, "calls: 10", "calls: 11", 1), "namespace: ns", "namespace: other", 1), "namespace,budget"},
	} {
		got := strings.Join(a.RestartNeeded(parse(tt.edit)), ",")
		if got != tt.want {
			t.Errorf("%s: restart needed for %q, want %q", name, got, tt.want)
		}
	}
}
