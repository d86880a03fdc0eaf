package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/oauth"
	"github.com/agentsec/agentsec/trust"
)

// validator collects problems, each located by the line of the value it
// is about.
type validator struct {
	root     *yaml.Node
	problems []string
}

// errorf records a problem with the value at path, a list of mapping keys
// and sequence indexes from the top of the file.
func (v *validator) errorf(path []any, format string, args ...any) {
	v.problems = append(v.problems, fmt.Sprintf("line %d: %s: %s", v.line(path), pathString(path), fmt.Sprintf(format, args...)))
}

// line returns the line of the value at path, or of the nearest enclosing
// value the file has.
func (v *validator) line(path []any) int {
	n := v.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			break
		}
		n, line = next, next.Line
	}
	return line
}

func pathString(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		case int:
			fmt.Fprintf(&b, "[%d]", p)
		}
	}
	return b.String()
}

func at(path ...any) []any { return path }

// trimTrust drops the package prefix from errors of the trust package.
func trimTrust(err error) string { return strings.TrimPrefix(err.Error(), "trust: ") }

var upstreamName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c *Config) validate(v *validator) {
	if c.Namespace == "" {
		v.errorf(at("namespace"), "is required: name the application whose decisions are logged")
	}
	policy := c.validateTrust(v)
	if err := (budget.Limits{Tokens: c.Budget.Tokens, Calls: c.Budget.Calls}).Validate(); err != nil {
		v.errorf(at("budget"), "%s", strings.TrimPrefix(err.Error(), "budget: "))
	}
	if c.Budget.CallTokens < 0 {
		v.errorf(at("budget", "call_tokens"), "%d is negative", c.Budget.CallTokens)
	}
	c.validateAudit(v)
	if c.Listen != "" {
		host, port, err := net.SplitHostPort(c.Listen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			v.errorf(at("listen"), "%q is not host:port, such as 127.0.0.1:8080", c.Listen)
		} else if host == "" {
			v.errorf(at("listen"), "%q listens on every interface; name one, such as 127.0.0.1:%s or 0.0.0.0:%s", c.Listen, port, port)
		}
	}
	if c.Admin.Listen != "" {
		_, port, err := net.SplitHostPort(c.Admin.Listen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			v.errorf(at("admin", "listen"), "%q is not host:port, such as 127.0.0.1:9090 (or :9090, on loopback)", c.Admin.Listen)
		} else if c.Admin.AdminAddress() == c.Listen && port != "0" {
			v.errorf(at("admin", "listen"), "%q is the agents' listen address too; give the operators their own", c.Admin.Listen)
		}
	}
	if c.MaxSessions < 0 {
		v.errorf(at("max_sessions"), "%d is negative", c.MaxSessions)
	}
	if c.MaxSessionsPerAgent < 0 {
		v.errorf(at("max_sessions_per_agent"), "%d is negative", c.MaxSessionsPerAgent)
	} else if c.MaxSessions > 0 && c.MaxSessionsPerAgent > c.MaxSessions {
		v.errorf(at("max_sessions_per_agent"), "%d is more than max_sessions (%d)", c.MaxSessionsPerAgent, c.MaxSessions)
	} else if c.MaxSessions == 0 && c.MaxSessionsPerAgent > DefaultMaxSessions {
		v.errorf(at("max_sessions_per_agent"), "%d is more than max_sessions (default %d): one agent could hold every session; raise max_sessions too", c.MaxSessionsPerAgent, DefaultMaxSessions)
	}
	if c.SessionIdleTimeout < 0 {
		v.errorf(at("session_idle_timeout"), "%v is negative", c.SessionIdleTimeout)
	}
	if c.StdioAgent != "" && policy != nil && !c.hasAgent(c.StdioAgent) {
		v.errorf(at("stdio_agent"), "agent %q is not among trust.agents", c.StdioAgent)
	}
	c.validateOperators(v)
	c.validateUpstreams(v)
	c.validatePrefixedRules(v)
	c.validateConnections(v)
	c.validateOAuth(v)
}

// validateOAuth checks auth.oauth: what oauth.NewVerifier checks, and
// that every agent a token may name is configured, with a level an
// operator assigned.
func (c *Config) validateOAuth(v *validator) {
	o := c.Auth.OAuth
	if o == nil {
		return
	}
	if o.Audience == "" {
		v.errorf(at("auth", "oauth", "audience"), "is required: this server's canonical URI, such as https://mcp.example.com/mcp, which tokens must be issued for")
	} else if u, err := url.Parse(o.Audience); err != nil || !u.IsAbs() || u.Fragment != "" {
		v.errorf(at("auth", "oauth", "audience"), "%q is not this server's canonical URI, such as https://mcp.example.com/mcp: tokens must be issued for it", o.Audience)
	}
	if len(o.Issuers) == 0 {
		v.errorf(at("auth", "oauth", "issuers"), "is required: list the authorization servers whose tokens are accepted")
	}
	seen := map[string]bool{}
	opaque := -1
	for i, iss := range o.Issuers {
		if x, err := iss.issuer(c); err != nil {
			v.errorf(at("auth", "oauth", "issuers", i), "%v", err)
		} else if err := x.Check(); err != nil {
			v.errorf(at("auth", "oauth", "issuers", i), "%v", err)
		}
		if in := iss.Introspection; in != nil && in.OpaqueTokens {
			if opaque >= 0 {
				v.errorf(at("auth", "oauth", "issuers", i, "introspection", "opaque_tokens"), "issuers[%d] accepts opaque tokens already: an opaque token names no issuer, and is never sent to any but the one that may have issued it", opaque)
			}
			opaque = i
		}
		if seen[iss.Issuer] {
			v.errorf(at("auth", "oauth", "issuers", i, "issuer"), "%s is listed twice", iss.Issuer)
		}
		seen[iss.Issuer] = true
		for _, value := range slices.Sorted(maps.Keys(iss.Agents)) {
			if agent := iss.Agents[value]; !c.hasAgent(agent) {
				v.errorf(at("auth", "oauth", "issuers", i, "agents", value), "agent %q is not among trust.agents: a token can only name an agent an operator configured", agent)
			}
		}
		for j, s := range iss.Scopes {
			if s == "" || strings.ContainsAny(s, " \"\\") {
				v.errorf(at("auth", "oauth", "issuers", i, "scopes", j), "%q is not a scope token", s)
			}
		}
	}
	if o.ClockSkew < 0 || o.ClockSkew > 5*time.Minute {
		v.errorf(at("auth", "oauth", "clock_skew"), "%v is outside 0 to 5m", o.ClockSkew)
	}
	if o.KeysMaxAge != 0 && o.KeysMaxAge < oauth.DefaultRefreshEvery {
		v.errorf(at("auth", "oauth", "keys_max_age"), "%v is less than %v, how often the keys are fetched again: they would lapse while the issuer is up", o.KeysMaxAge, oauth.DefaultRefreshEvery)
	}
}

// DefaultMaxSessions is max_sessions when it is 0, as
// mcpgate.DefaultMaxSessions: config does not import the gateway.
const DefaultMaxSessions = 1000

// defaultMaxConnections is max_connections when it is 0, as
// mcpgate.DefaultMaxConnections: config does not import the gateway.
const defaultMaxConnections = 4096

// validateConnections checks the bounds on "agentsec serve"'s
// connections. A timeout under a second is refused: clients over real
// networks would be cut off, and a typo ("30ms" for "30s") would not be
// found until they were.
func (c *Config) validateConnections(v *validator) {
	max := c.MaxConnections
	switch {
	case max < 0:
		v.errorf(at("max_connections"), "%d is negative", max)
	case max == 0:
		max = defaultMaxConnections
	}
	switch per := c.MaxConnectionsPerAddress; {
	case per < 0:
		v.errorf(at("max_connections_per_address"), "%d is negative", per)
	case per > max && c.MaxConnections == 0:
		v.errorf(at("max_connections_per_address"), "%d is more than max_connections (default %d); raise max_connections too", per, max)
	case per > max && max > 0:
		v.errorf(at("max_connections_per_address"), "%d is more than max_connections (%d); one address can't hold more than all of them", per, max)
	}
	for _, d := range []struct {
		key     string
		value   time.Duration
		example string
	}{
		{"connection_idle_timeout", c.ConnectionIdleTimeout, "2m"},
		{"request_body_timeout", c.RequestBodyTimeout, "30s"},
	} {
		switch {
		case d.value < 0:
			v.errorf(at(d.key), "%v is negative", d.value)
		case d.value > 0 && d.value < time.Second:
			v.errorf(at(d.key), "%v is less than a second, which would cut clients off; give at least 1s, such as %s", d.value, d.example)
		}
	}
}

// validatePrefixedRules catches rules written for bare tool names in front
// of several upstreams, where every tool is offered as <name>__<tool>: a
// rule that can match none of those names governs nothing.
func (c *Config) validatePrefixedRules(v *validator) {
	if len(c.Upstreams) < 2 {
		return
	}
	for i, r := range c.Trust.Rules {
		literal := r.Tool
		if j := strings.IndexAny(literal, "*?[\\"); j >= 0 {
			literal = literal[:j]
		}
		matches := literal == ""
		for _, u := range c.Upstreams {
			prefix := u.Name + "__"
			if strings.HasPrefix(literal, prefix) || strings.HasPrefix(prefix, literal) {
				matches = true
			}
		}
		if !matches {
			v.errorf(at("trust", "rules", i, "tool"), "%q matches no tool: in front of several upstreams, tools are named <upstream>__<tool>, such as %q",
				r.Tool, c.Upstreams[0].Name+"__"+r.Tool)
		}
	}
}

func (c *Config) hasAgent(id string) bool {
	for _, a := range c.Trust.Agents {
		if a.ID == id {
			return true
		}
	}
	return false
}

// Ladder returns the configured ladder.
func (t *Trust) ladder() (*trust.Ladder, error) {
	switch {
	case len(t.Ladder.Levels) > 0:
		return trust.NewLadder("custom", t.Ladder.Levels...)
	case t.Ladder.Builtin == "":
		return trust.DefaultLadder(), nil
	}
	return trust.BuiltinLadder(t.Ladder.Builtin)
}

// validateTrust checks the trust section and returns its policy, or nil if
// the ladder is unusable.
func (c *Config) validateTrust(v *validator) *trust.Policy {
	t := &c.Trust
	ladder, err := t.ladder()
	if err != nil {
		v.errorf(at("trust", "ladder"), "%s", trimTrust(err))
		return nil
	}
	seen := map[string]bool{}
	var rules []trust.Rule
	for i, r := range t.Rules {
		rule := trust.Rule{Tool: r.Tool, Level: r.Level}
		if _, err := trust.NewPolicy(ladder, []trust.Rule{rule}, ""); err != nil {
			msg := strings.TrimPrefix(trimTrust(err), "rule 1: ")
			v.errorf(at("trust", "rules", i), "%s", strings.TrimPrefix(msg, "rule 1 "))
			continue
		}
		if seen[r.Tool] {
			v.errorf(at("trust", "rules", i, "tool"), "tool %q has a rule already", r.Tool)
			continue
		}
		seen[r.Tool] = true
		rules = append(rules, rule)
	}
	policy, err := trust.NewPolicy(ladder, rules, t.DefaultLevel)
	if err != nil {
		v.errorf(at("trust", "default_level"), "%s", trimTrust(err))
		policy, _ = trust.NewPolicy(ladder, rules, "")
	}
	gate, err := trust.NewGate(policy)
	if err != nil {
		v.errorf(at("trust"), "%s", trimTrust(err))
		return nil
	}
	type key struct{ id, scope string }
	assigned := map[key]bool{}
	tokens := map[string]int{}
	for i, a := range t.Agents {
		if _, err := ladder.Parse(a.Level); err != nil {
			v.errorf(at("trust", "agents", i, "level"), "%s", trimTrust(err))
			continue
		}
		as := trust.Assignment{Agent: a.ID, Scope: a.Scope, Level: a.Level, Expires: a.Expires}
		if err := gate.Validate(as); err != nil {
			v.errorf(at("trust", "agents", i), "%s", trimTrust(err))
			continue
		}
		if assigned[key{a.ID, a.Scope}] {
			v.errorf(at("trust", "agents", i, "id"), "agent %q is assigned twice in scope %q", a.ID, a.Scope)
		}
		assigned[key{a.ID, a.Scope}] = true
		if a.TokenSHA256 == "" {
			continue
		}
		if b, err := hex.DecodeString(a.TokenSHA256); err != nil || len(b) != 32 || strings.ToLower(a.TokenSHA256) != a.TokenSHA256 {
			v.errorf(at("trust", "agents", i, "token_sha256"), "is not a SHA-256 in lowercase hex; make a token and its hash with 'agentsec token'")
			continue
		}
		if j, dup := tokens[a.TokenSHA256]; dup && t.Agents[j].ID != a.ID {
			v.errorf(at("trust", "agents", i, "token_sha256"), "is agent %q's token too; each agent needs its own", t.Agents[j].ID)
		}
		tokens[a.TokenSHA256] = i
	}
	return policy
}

// validateOperators checks the operators: each named once, with a known
// role and a token of its own, which is no agent's.
func (c *Config) validateOperators(v *validator) {
	agentTokens := map[string]string{}
	for _, a := range c.Trust.Agents {
		if a.TokenSHA256 != "" {
			agentTokens[a.TokenSHA256] = a.ID
		}
	}
	ids, tokens := map[string]bool{}, map[string]string{}
	for i, o := range c.Operators {
		switch {
		case o.ID == "":
			v.errorf(at("operators", i, "id"), "is required: it names the operator in the records of its changes")
		case !utf8.ValidString(o.ID) || len(o.ID) > 256:
			v.errorf(at("operators", i, "id"), "must be valid UTF-8 of at most 256 bytes")
		case ids[o.ID]:
			v.errorf(at("operators", i, "id"), "operator %q is configured twice", o.ID)
		}
		ids[o.ID] = true
		if o.Role != RoleAuditor && o.Role != RoleAdmin {
			v.errorf(at("operators", i, "role"), "%q is not a role: %s (reads the whole log) or %s (also changes things)", o.Role, RoleAuditor, RoleAdmin)
		}
		if b, err := hex.DecodeString(o.TokenSHA256); err != nil || len(b) != 32 || strings.ToLower(o.TokenSHA256) != o.TokenSHA256 {
			v.errorf(at("operators", i, "token_sha256"), "is not a SHA-256 in lowercase hex; make a token and its hash with 'agentsec token'")
			continue
		}
		if agent, dup := agentTokens[o.TokenSHA256]; dup {
			v.errorf(at("operators", i, "token_sha256"), "is agent %q's token too; an operator needs its own", agent)
		}
		if other, dup := tokens[o.TokenSHA256]; dup {
			v.errorf(at("operators", i, "token_sha256"), "is operator %q's token too; each operator needs its own", other)
		}
		tokens[o.TokenSHA256] = o.ID
	}
}

func (c *Config) validateAudit(v *validator) {
	a := &c.Audit
	switch {
	case a.Path != "" && c.Postgres.URL != "":
		v.errorf(at("audit", "path"), "and postgres.url both name where the log is kept; with postgres.url the log is in PostgreSQL: remove audit.path")
	case c.Postgres.URL != "" && a.KeyFile == "":
		v.errorf(at("audit", "key_file"), "is required with postgres.url: a durable log is signed; make a key with 'agentsec keygen'")
	case a.Path != "" && a.KeyFile == "":
		v.errorf(at("audit", "key_file"), "is required with audit.path: a durable log is signed; make a key with 'agentsec keygen'")
	case a.Path == "" && c.Postgres.URL == "" && a.CheckpointFile != "":
		v.errorf(at("audit", "checkpoint_file"), "needs a durable log (audit.path or postgres.url) and audit.key_file")
	}
	if c.Postgres.URL != "" {
		if _, err := pgconn.ParseConfig(c.Postgres.URL); err != nil {
			// pgx's message may quote the string, password and all.
			v.errorf(at("postgres", "url"), "is not a PostgreSQL connection string, such as postgres://agentsec@db.internal:5432/agentsec")
		} else if holdsPassword(c.Postgres.URL) {
			v.errorf(at("postgres", "url"), "holds a password; leave it out and set PGPASSWORD or a ~/.pgpass file, which agentsec reads as psql does")
		}
	}
	if a.KeyFile != "" {
		if _, err := c.signerKey(); err != nil {
			v.errorf(at("audit", "key_file"), "%v", err)
		}
	}
	if a.CheckpointFile != "" && (a.Path != "" || c.Postgres.URL != "") {
		// A checkpoint that can't be written stops every call, so a
		// destination that can't be is refused now, not at the first
		// checkpoint. c.Path cleans a relative path, and with it the
		// trailing separator that makes it a directory.
		p := c.Path(a.CheckpointFile)
		if os.IsPathSeparator(a.CheckpointFile[len(a.CheckpointFile)-1]) && !os.IsPathSeparator(p[len(p)-1]) {
			p += string(os.PathSeparator)
		}
		if err := audit.CheckCheckpointFile(p); err != nil {
			v.errorf(at("audit", "checkpoint_file"), "%s", strings.TrimPrefix(err.Error(), "audit: "))
		}
	}
}

// signerKey reads the audit signer key file.
func (c *Config) signerKey() (string, error) {
	key, err := audit.ReadSignerKeyFile(c.Path(c.Audit.KeyFile))
	if err != nil {
		return "", err
	}
	if _, _, err := audit.NewSigner(key); err != nil {
		return "", fmt.Errorf("%s is not a signer key from 'agentsec keygen' (the .key file, not the .pub): %v",
			c.Audit.KeyFile, strings.TrimPrefix(err.Error(), "audit: "))
	}
	return key, nil
}

func (c *Config) validateUpstreams(v *validator) {
	names := map[string]bool{}
	for i, u := range c.Upstreams {
		if !upstreamName.MatchString(u.Name) || strings.Contains(u.Name, "__") || strings.HasSuffix(u.Name, "_") {
			v.errorf(at("upstreams", i, "name"), "%q must be 1 to 64 letters, digits, '-' or '_', with no \"__\" and no '_' at the end: tools are offered as <name>__<tool>", u.Name)
		} else if names[u.Name] {
			v.errorf(at("upstreams", i, "name"), "%q names another upstream already", u.Name)
		}
		names[u.Name] = true
		switch {
		case u.Command == "" && u.URL == "":
			v.errorf(at("upstreams", i), "needs a command (a stdio server) or a url (a streamable-HTTP server)")
		case u.Command != "" && u.URL != "":
			v.errorf(at("upstreams", i), "has both a command and a url; give one")
		case u.URL != "":
			if len(u.Args) > 0 || len(u.Env) > 0 {
				v.errorf(at("upstreams", i), "args and env apply to a command, not a url")
			}
			p, err := url.Parse(u.URL)
			if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
				v.errorf(at("upstreams", i, "url"), "%q is not an http:// or https:// URL", u.URL)
			}
		}
		if u.Timeout < 0 {
			v.errorf(at("upstreams", i, "timeout"), "%v is negative", u.Timeout)
		}
		for k := range u.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				v.errorf(at("upstreams", i, "env"), "%q is not an environment variable name", k)
			}
		}
	}
}

// passwordSetting finds a password in a key=value connection string.
var passwordSetting = regexp.MustCompile(`(^|\s)password\s*=`)

// holdsPassword reports whether a PostgreSQL connection string holds a
// password: in a URL's user part or query, or as a key=value setting.
func holdsPassword(dsn string) bool {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		_, inUser := u.User.Password()
		return inUser || u.Query().Has("password")
	}
	return passwordSetting.MatchString(dsn)
}

// CheckCommands checks that a gateway can start every upstream command of
// c, which Load read from the file at path: that exec.Command finds each,
// in PATH or, for a name with a slash, at that path from the current
// directory, and that it is an executable file. Every problem is a line
// of the error, as in Load's: "path: line N: upstreams[i].command: …".
//
// Load leaves this check out: it belongs to the machine and the PATH of
// the process that starts the servers, not to the file, which is also
// parsed where they need not run — the examples in the documentation
// name commands not every machine has. agentsec config check and the
// gateway commands at start-up make it.
func CheckCommands(path string, c *Config) error {
	lookErrs := map[int]error{}
	for i, u := range c.Upstreams {
		if u.Command != "" {
			if _, err := exec.LookPath(u.Command); err != nil {
				lookErrs[i] = err
			}
		}
	}
	if len(lookErrs) == 0 {
		return nil
	}
	// Read the file again, for the lines of the commands.
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize))
	if err != nil {
		return fmt.Errorf("config: reading %s: %w", path, err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil || root.Kind == 0 {
		return fmt.Errorf("config: %s changed since it was read", path)
	}
	v := &validator{root: &root}
	for i := range c.Upstreams {
		name, err := c.Upstreams[i].Command, lookErrs[i]
		switch {
		case err == nil:
		case errors.Is(err, exec.ErrDot):
			v.errorf(at("upstreams", i, "command"), "%q is found only in the current directory, by way of PATH, which agentsec does not run; write %q",
				name, "./"+name)
		case errors.Is(err, exec.ErrNotFound):
			v.errorf(at("upstreams", i, "command"), "%q is not found in PATH; install it, or give its full path", name)
		case errors.Is(err, fs.ErrNotExist):
			v.errorf(at("upstreams", i, "command"), "%s does not exist", name)
		case errors.Is(err, fs.ErrPermission):
			v.errorf(at("upstreams", i, "command"), "%s is not an executable file", name)
		default:
			v.errorf(at("upstreams", i, "command"), "%q cannot be started: %v", name, err)
		}
	}
	for i := range v.problems {
		v.problems[i] = path + ": " + v.problems[i]
	}
	return errors.New(strings.Join(v.problems, "\n"))
}
