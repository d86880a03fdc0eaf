// Package config reads agentsec.yaml, the one file that configures an
// agentsec gateway: the trust ladder, tool rules and agents, session
// limits, the audit log and its signing key, the listen address and the
// upstream MCP servers. docs/config.md documents every field.
//
// Decoding is strict: an unknown key, a value of the wrong type, or a
// setting that fails validation is an error naming its line. Nothing is
// started or created here; Load only reads the file and the files it
// names.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/agentsec/agentsec/oauth"
)

// Config is agentsec.yaml.
type Config struct {
	// Namespace is stamped on every audit record the gateway writes.
	Namespace string `yaml:"namespace"`
	Trust     Trust  `yaml:"trust"`
	Budget    Budget `yaml:"budget"`
	Audit     Audit  `yaml:"audit"`
	// Postgres keeps budgets and the audit log in a PostgreSQL database
	// that several replicas share, instead of in memory and SQLite.
	Postgres Postgres `yaml:"postgres"`
	// Listen is the address "agentsec serve" listens on, such as
	// "127.0.0.1:8080".
	Listen string `yaml:"listen"`
	// Admin is the operators' listener, apart from the agents'.
	Admin Admin `yaml:"admin"`
	// Auth configures how agents sign in to "agentsec serve" besides
	// their static tokens.
	Auth Auth `yaml:"auth"`
	// Operators are the people and programs that read the whole log, or
	// change what agents may do, over the decision API (docs/api.md).
	Operators []Operator `yaml:"operators"`
	// MaxSessions bounds the MCP sessions "agentsec serve" holds at once;
	// 0 means 1000.
	MaxSessions int `yaml:"max_sessions"`
	// MaxSessionsPerAgent bounds the sessions one agent holds at once, so
	// that one token can't take them all; 0 means a quarter of
	// MaxSessions.
	MaxSessionsPerAgent int `yaml:"max_sessions_per_agent"`
	// AllowUnlistedTools lets a tools/call name a tool its upstream never
	// listed in the session. Off by default: a server that reads names
	// loosely could run a listed tool under a name the trust gate judged
	// as another.
	AllowUnlistedTools bool `yaml:"allow_unlisted_tools"`
	// SessionIdleTimeout ends an HTTP session no request has touched for
	// that long; 0 means 30 minutes.
	SessionIdleTimeout time.Duration `yaml:"session_idle_timeout"`
	// MaxConnections bounds the TCP connections "agentsec serve" holds
	// open at once, so that a flood of them can't exhaust the process's
	// file descriptors; 0 means 4096.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerAddress bounds those from one client address (an
	// IPv6 client's /64), so that one client can't take them all; 0
	// means 1024, or MaxConnections if that is lower. Behind a load
	// balancer every connection comes from its address: set it to
	// MaxConnections there.
	MaxConnectionsPerAddress int `yaml:"max_connections_per_address"`
	// ConnectionIdleTimeout closes a keep-alive connection that has
	// carried no request for that long; 0 means 2 minutes.
	ConnectionIdleTimeout time.Duration `yaml:"connection_idle_timeout"`
	// RequestBodyTimeout bounds how long a request's body may take to
	// arrive once its headers have; 0 means 30 seconds. Responses are not
	// bounded: one may be an event stream as long as a tool call.
	RequestBodyTimeout time.Duration `yaml:"request_body_timeout"`
	// StdioAgent is the agent "agentsec proxy" speaks for: over stdio the
	// gateway serves one client, whose identity is configured, not
	// claimed.
	StdioAgent string `yaml:"stdio_agent"`
	// Upstreams are the MCP servers the gateway fronts.
	Upstreams []Upstream `yaml:"upstreams"`

	// dir is the directory of the file, for relative paths in it.
	dir string
	// digest is the SHA-256 of the file's bytes.
	digest [32]byte
}

// Version names the file's contents: "sha256:" and the first 16 hex
// digits of its SHA-256 — what sha256sum prints first. It is stamped on
// the audit record of every call decided under this configuration.
func (c *Config) Version() string {
	return "sha256:" + hex.EncodeToString(c.digest[:8])
}

// Reloadable lists the settings a running "agentsec serve" can take from
// a changed file: the trust ladder, rules, default level and agents
// (their levels and tokens), the operators, and how agents sign in
// (auth). RestartNeeded names the others that differ.
var Reloadable = []string{"trust", "operators", "auth"}

// RestartNeeded returns the top-level keys whose values differ between c
// and next, other than the Reloadable ones: changes a reload can't apply.
func (c *Config) RestartNeeded(next *Config) []string {
	var keys []string
	a, b := reflect.ValueOf(c).Elem(), reflect.ValueOf(next).Elem()
	for i := range a.NumField() {
		f := a.Type().Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || key == "" || slices.Contains(Reloadable, key) {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			keys = append(keys, key)
		}
	}
	return keys
}

// Auth configures how agents sign in besides static tokens.
type Auth struct {
	// OAuth admits agents by OAuth 2.1 access tokens an identity
	// provider issued (docs/config.md).
	OAuth *OAuth `yaml:"oauth"`
}

// OAuth makes "agentsec serve" an OAuth 2.1 resource server: see
// oauth.Config, whose fields these are.
type OAuth struct {
	Audience   string        `yaml:"audience"`
	Issuers    []OAuthIssuer `yaml:"issuers"`
	ClockSkew  time.Duration `yaml:"clock_skew"`
	KeysMaxAge time.Duration `yaml:"keys_max_age"`
}

// OAuthIssuer is an authorization server whose tokens are accepted: see
// oauth.Issuer, whose fields these are.
type OAuthIssuer struct {
	Issuer        string              `yaml:"issuer"`
	JWKSURL       string              `yaml:"jwks_url"`
	Scopes        []string            `yaml:"scopes"`
	AgentClaim    string              `yaml:"agent_claim"`
	Agents        map[string]string   `yaml:"agents"`
	Introspection *OAuthIntrospection `yaml:"introspection"`
}

// OAuthIntrospection has an issuer confirm its tokens (RFC 7662): see
// oauth.Introspection, whose fields these are, but for the secret, which
// is read from ClientSecretFile.
type OAuthIntrospection struct {
	URL              string        `yaml:"url"`
	ClientID         string        `yaml:"client_id"`
	ClientSecretFile string        `yaml:"client_secret_file"`
	OpaqueTokens     bool          `yaml:"opaque_tokens"`
	Cache            time.Duration `yaml:"cache"`
}

// issuer returns the oauth.Issuer of o, reading its introspection secret
// through c's paths.
func (o OAuthIssuer) issuer(c *Config) (oauth.Issuer, error) {
	iss := oauth.Issuer{URL: o.Issuer, JWKSURL: o.JWKSURL, Scopes: o.Scopes, AgentClaim: o.AgentClaim, Agents: o.Agents}
	if in := o.Introspection; in != nil {
		iss.Introspection = &oauth.Introspection{URL: in.URL, ClientID: in.ClientID, Opaque: in.OpaqueTokens, CacheFor: in.Cache}
		if in.ClientSecretFile == "" {
			return iss, errors.New("introspection.client_secret_file is required: the file holding the secret agentsec authenticates to the issuer with")
		}
		secret, err := os.ReadFile(c.Path(in.ClientSecretFile))
		if err != nil {
			return iss, fmt.Errorf("introspection.client_secret_file: %w", err)
		}
		iss.Introspection.ClientSecret = strings.TrimSpace(string(secret))
	}
	return iss, nil
}

// OAuthVerifier returns the Verifier of auth.oauth, or nil if it is not
// configured.
func (c *Config) OAuthVerifier() (*oauth.Verifier, error) {
	o := c.Auth.OAuth
	if o == nil {
		return nil, nil
	}
	cfg := oauth.Config{Audience: o.Audience, ClockSkew: o.ClockSkew, KeysMaxAge: o.KeysMaxAge}
	for i, o := range o.Issuers {
		iss, err := o.issuer(c)
		if err != nil {
			return nil, fmt.Errorf("oauth: issuers[%d]: %w", i, err)
		}
		cfg.Issuers = append(cfg.Issuers, iss)
	}
	return oauth.NewVerifier(cfg)
}

// Trust configures the trust gate.
type Trust struct {
	// Ladder is "default" (public < verified < privileged), "aumos", or a
	// list of level names, lowest first. Empty means "default".
	Ladder Ladder `yaml:"ladder"`
	// DefaultLevel is required by tools no rule covers; empty denies them.
	DefaultLevel string `yaml:"default_level"`
	// Rules map tool names or glob patterns to required levels.
	Rules []Rule `yaml:"rules"`
	// Agents are the agents and the levels an operator assigned them.
	Agents []Agent `yaml:"agents"`
}

// Ladder names a built-in ladder or lists custom levels.
type Ladder struct {
	Builtin string
	Levels  []string
}

// UnmarshalYAML accepts a name or a list of level names.
func (l *Ladder) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&l.Builtin)
	case yaml.SequenceNode:
		return n.Decode(&l.Levels)
	}
	return fmt.Errorf("line %d: ladder must be a name or a list of level names", n.Line)
}

// Rule says which level a tool requires.
type Rule struct {
	// Tool is a tool name or a glob pattern ('*', '?', '[…]').
	Tool  string `yaml:"tool"`
	Level string `yaml:"level"`
}

// Agent is one agent and the level assigned to it.
type Agent struct {
	// ID names the agent in decisions and audit records.
	ID    string `yaml:"id"`
	Level string `yaml:"level"`
	// Scope, if set, limits the assignment to requests in that scope.
	Scope string `yaml:"scope"`
	// Expires, if set, is when the assignment lapses and the agent falls
	// to the lowest level (RFC 3339).
	Expires time.Time `yaml:"expires"`
	// TokenSHA256 is the hex SHA-256 of the bearer token the agent
	// presents over HTTP; "agentsec token" makes a token and its hash.
	// The token itself is never stored.
	TokenSHA256 string `yaml:"token_sha256"`
}

// Operator roles.
const (
	// RoleAuditor reads the whole audit log and every session's budget.
	RoleAuditor = "auditor"
	// RoleAdmin is an auditor that also changes things: it assigns and
	// revokes agents' trust levels and logs events of its own, each
	// change recorded with its id.
	RoleAdmin = "admin"
)

// Operator is one operator of the decision API: not an agent — it takes
// no budget and calls no tools — but someone who reads or steers.
type Operator struct {
	// ID names the operator in the audit records of its changes.
	ID string `yaml:"id"`
	// Role is RoleAuditor or RoleAdmin.
	Role string `yaml:"role"`
	// TokenSHA256 is the hex SHA-256 of the operator's bearer token, as
	// an agent's is; "agentsec token" makes one.
	TokenSHA256 string `yaml:"token_sha256"`
}

// Budget is every session's fixed limits.
type Budget struct {
	Tokens int64 `yaml:"tokens"`
	Calls  int64 `yaml:"calls"`
	// CallTokens, if set, is the most tokens one call's result may
	// count: a bigger result is withheld, and the call recorded as over
	// budget.
	CallTokens int64 `yaml:"call_tokens"`
}

// Audit configures the audit log.
type Audit struct {
	// Path is the SQLite database of the log, created on first start.
	// Empty keeps the log in memory, which "agentsec serve" refuses.
	Path string `yaml:"path"`
	// KeyFile is the signer key made by "agentsec keygen"; required with
	// Path.
	KeyFile string `yaml:"key_file"`
	// CheckpointEvery, CheckpointInterval and CheckpointFile: a checkpoint
	// is signed after that many records (default 1000), at least that
	// often while records arrive (default 10s), and each is written to
	// that file or directory, which should be away from the log.
	CheckpointEvery    uint64        `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	CheckpointFile     string        `yaml:"checkpoint_file"`
}

// Admin configures "agentsec serve"'s admin listener, which serves the
// operators — for now the probes /healthz and /readyz — apart from the
// agents' port.
type Admin struct {
	// Listen is its host:port; a port alone (":9090") listens on
	// loopback. Empty means no admin listener.
	Listen string `yaml:"listen"`
}

// AdminAddress is the address the admin listener listens on: Listen,
// with loopback for a missing host.
func (a Admin) AdminAddress() string {
	if host, port, err := net.SplitHostPort(a.Listen); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return a.Listen
}

// Postgres names the PostgreSQL database of a fleet of replicas.
type Postgres struct {
	// URL is the connection string,
	// "postgres://user@host:5432/database?sslmode=verify-full". Keep the
	// password out of it: PGPASSWORD or a ~/.pgpass file supply it, as
	// they do for PostgreSQL's own clients. "agentsec migrate" creates
	// the schema.
	URL string `yaml:"url"`
}

// Upstream is one MCP server behind the gateway: a command spoken to over
// stdio, or a streamable-HTTP URL.
type Upstream struct {
	// Name identifies the upstream; when several upstreams are combined
	// it prefixes their tool and prompt names: "<name>__<tool>".
	Name string `yaml:"name"`
	// Command and Args start a stdio server; Env adds to its environment.
	Command string            `yaml:"command"`
	Args    []string          `yaml:"args"`
	Env     map[string]string `yaml:"env"`
	// URL is a streamable-HTTP server's endpoint.
	URL string `yaml:"url"`
	// Timeout bounds how long a request waits for the server's answer;
	// progress notifications restart the wait. 0 means 60s.
	Timeout time.Duration `yaml:"timeout"`
}

// maxFileSize bounds the configuration file.
const maxFileSize = 1 << 20

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseFile(path, data)
}

// ReadFile reads the configuration file at path, of at most 1 MiB.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, maxFileSize)
	}
	return data, nil
}

// ParseFile is Parse of data read from the file at path: relative paths
// are taken relative to its directory, and each problem names the file.
func ParseFile(path string, data []byte) (*Config, error) {
	cfg, err := Parse(data, filepath.Dir(path))
	if err != nil {
		// Name the file on every line, as compilers do.
		lines := strings.Split(err.Error(), "\n")
		for i := range lines {
			lines[i] = path + ": " + lines[i]
		}
		return nil, errors.New(strings.Join(lines, "\n"))
	}
	return cfg, nil
}

// Parse decodes and validates a configuration. Relative paths in it are
// taken relative to dir. Every problem found is reported, each on a line
// of its own starting with its line in the file.
func Parse(data []byte, dir string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(err)
	}
	if root.Kind == 0 {
		return nil, errors.New("line 1: the configuration is empty")
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	cfg := &Config{dir: dir, digest: sha256.Sum256(data)}
	if err := dec.Decode(cfg); err != nil {
		return nil, yamlError(err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); err != io.EOF {
		return nil, fmt.Errorf("line %d: only one YAML document is allowed", more.Line)
	}
	v := &validator{root: &root}
	cfg.validate(v)
	if len(v.problems) > 0 {
		return nil, errors.New(strings.Join(v.problems, "\n"))
	}
	return cfg, nil
}

var fieldNotFound = regexp.MustCompile(`field (\S+) not found in type config\.(\S+)`)

// yamlError rewrites the YAML package's messages for people.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		lines[i] = fieldNotFound.ReplaceAllString(e, `unknown key "$1" in $2`)
	}
	return errors.New(strings.Join(lines, "\n"))
}

// Path resolves a path from the file relative to the file's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}
