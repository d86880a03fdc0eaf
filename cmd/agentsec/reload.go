package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/oauth"
)

// Audit events of a reload's changes of credentials.
const (
	eventAgentToken    = "agent.token"
	eventOperatorToken = "operator.token"
	eventAuthOAuth     = "auth.oauth"
)

// A reloader puts a changed configuration file into force in a running
// serve: on SIGHUP, and on an admin's POST /reload on the admin listener.
type reloader struct {
	file  string
	stack *agentsec.Stack
	api   *httpapi.Server
	gw    *mcpgate.Gateway // nil without upstreams
	log   *slog.Logger
	ctx   context.Context // serve's, for fetches that outlive a reload

	mu        sync.Mutex // one reload at a time
	cfg       *config.Config
	agents    []httpapi.Credential // the credentials in force
	operators []httpapi.Operator
	verifier  *oauth.Verifier // the gateway's, in force
}

func newReloader(ctx context.Context, file string, cfg *config.Config, stack *agentsec.Stack, api *httpapi.Server, gw *mcpgate.Gateway, log *slog.Logger) *reloader {
	r := &reloader{ctx: ctx, file: file, cfg: cfg, stack: stack, api: api, gw: gw, log: log,
		agents: api.Agents, operators: api.Operators}
	if gw != nil {
		r.verifier = gw.OAuth
	}
	return r
}

// reload reads the file again and, if it is valid and changes only what
// a running serve can change (config.Reloadable), puts it into force:
// the trust gate through Stack.Reload, which records each change first,
// then the agents' and operators' tokens and the OAuth settings (which
// keep the keys already fetched). Otherwise it returns why and changes
// nothing.
func (r *reloader) reload(ctx context.Context, operator string) (agentsec.Reloaded, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, err := unchangingFor(r.file, func() { time.Sleep(settleTime) })
	if err != nil {
		return agentsec.Reloaded{}, err
	}
	next, err := config.ParseFile(r.file, data)
	if err != nil {
		return agentsec.Reloaded{}, err
	}
	if keys := r.cfg.RestartNeeded(next); len(keys) > 0 {
		return agentsec.Reloaded{}, fmt.Errorf("%s: %s changed, which only a restart applies; a reload takes changes of %s",
			r.file, strings.Join(keys, ", "), strings.Join(config.Reloadable, ", "))
	}
	api, err := apiFor(next, r.file)
	if err != nil {
		return agentsec.Reloaded{}, err
	}
	var gw *mcpgate.Gateway
	records := credentialChanges(r.agents, api.Agents, r.operators, api.Operators)
	if r.gw != nil {
		if gw, err = gatewayFor(next, r.file, api.Agents); err != nil {
			return agentsec.Reloaded{}, err
		}
		gw.OAuth.ShareKeys(r.verifier)
		records = append(records, oauthChanges(r.cfg.Auth.OAuth, next.Auth.OAuth)...)
	}
	sc, err := next.StackConfig()
	if err != nil {
		return agentsec.Reloaded{}, err
	}
	res, err := r.stack.Reload(ctx, agentsec.Reload{TrustGate: sc.TrustGate, Version: sc.Version, Operator: operator,
		Records: records})
	if err != nil {
		return agentsec.Reloaded{}, err
	}
	r.api.SetCredentials(api.Agents, api.Operators)
	if gw != nil {
		r.gw.SetAgents(gw.Agents)
		r.gw.SetOAuth(gw.OAuth)
		r.verifier = gw.OAuth
		if v := gw.OAuth; v != nil {
			go func() {
				if err := v.Prefetch(r.ctx); err != nil {
					r.log.Warn("agentsec: OAuth signing keys can't be had yet; the issuer's tokens are refused until they can", "err", err)
				}
			}()
		}
	}
	r.cfg, r.agents, r.operators = next, api.Agents, api.Operators
	return res, nil
}

// settleTime is how long a configuration file must stay the same before
// a reload reads it.
const settleTime = 100 * time.Millisecond

// unchangingFor returns the configuration file's bytes, read before and
// after wait runs (for settleTime), and refuses a file that changed
// meanwhile: one being written in place, whose first part may parse — a
// file cut after its first rules is valid YAML, and would drop the rest.
// What it returns is what it compared, to be parsed as it is.
func unchangingFor(file string, wait func()) ([]byte, error) {
	before, err := config.ReadFile(file)
	if err != nil {
		return nil, err
	}
	wait()
	after, err := config.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(before, after) {
		return nil, fmt.Errorf("%s changed while it was read: it is being written; reload once it is complete (write a new file beside it and rename it over, which is atomic)", file)
	}
	return after, nil
}

// onSignal reloads for a SIGHUP and says what happened on the log.
func (r *reloader) onSignal(ctx context.Context) {
	res, err := r.reload(ctx, "")
	if err != nil {
		r.log.Error("agentsec: reload refused; the running configuration is kept", "file", r.file, "err", err)
		return
	}
	r.log.Info("agentsec: configuration reloaded", "file", r.file, "version", r.stack.TrustGate.Version(),
		"changes", len(res.Changes), "detail", strings.Join(res.Changes, "; "))
}

// credentialChanges returns a record for each token added or removed,
// each agent's token whose scopes changed, and each operator's role
// changed. A token is named by the first 16 hex
// digits of its SHA-256, as the configuration holds it.
func credentialChanges(oldAgents, newAgents []httpapi.Credential, oldOps, newOps []httpapi.Operator) []audit.Record {
	var out []audit.Record
	agentKey := func(c httpapi.Credential) string { return c.Agent + "\x00" + hex.EncodeToString(c.TokenSHA256[:8]) }
	oldA, newA := byKey(oldAgents, agentKey), byKey(newAgents, agentKey)
	scopes := func(c httpapi.Credential) string {
		return fmt.Sprintf("%q", slices.Sorted(slices.Values(c.Scopes)))
	}
	for _, c := range newAgents {
		prev, ok := oldA[agentKey(c)]
		switch {
		case !ok:
			out = append(out, tokenRecord(eventAgentToken, c.Agent, "", "added", c.TokenSHA256))
		case scopes(prev) != scopes(c):
			// The token acts in other scopes now: at other levels.
			out = append(out, tokenRecord(eventAgentToken, c.Agent, "", "scopes "+scopes(prev)+" → "+scopes(c), c.TokenSHA256))
		}
	}
	for _, c := range oldAgents {
		if _, ok := newA[agentKey(c)]; !ok {
			out = append(out, tokenRecord(eventAgentToken, c.Agent, "", "removed", c.TokenSHA256))
		}
	}
	role := func(o httpapi.Operator) string {
		if o.Admin {
			return config.RoleAdmin
		}
		return config.RoleAuditor
	}
	opKey := func(o httpapi.Operator) string { return o.ID + "\x00" + hex.EncodeToString(o.TokenSHA256[:8]) }
	oldO, newO := byKey(oldOps, opKey), byKey(newOps, opKey)
	for _, o := range newOps {
		prev, ok := oldO[opKey(o)]
		switch {
		case !ok:
			out = append(out, tokenRecord(eventOperatorToken, o.ID, role(o), "added", o.TokenSHA256))
		case prev.Admin != o.Admin:
			out = append(out, tokenRecord(eventOperatorToken, o.ID, role(o), "role "+role(prev)+" → "+role(o), o.TokenSHA256))
		}
	}
	for _, o := range oldOps {
		if _, ok := newO[opKey(o)]; !ok {
			out = append(out, tokenRecord(eventOperatorToken, o.ID, role(o), "removed", o.TokenSHA256))
		}
	}
	return out
}

// oauthChanges returns a record for each change of auth.oauth: each
// mapping of an issuer's subject (or client) to an agent added or
// removed — who may connect — and each other setting changed.
func oauthChanges(prev, next *config.OAuth) []audit.Record {
	type mapping struct{ issuer, claim, value, agent string }
	mappings := func(o *config.OAuth) []mapping {
		var out []mapping
		if o == nil {
			return nil
		}
		for _, iss := range o.Issuers {
			claim := cmp.Or(iss.AgentClaim, "sub")
			for _, value := range slices.Sorted(maps.Keys(iss.Agents)) {
				out = append(out, mapping{iss.Issuer, claim, value, iss.Agents[value]})
			}
		}
		return out
	}
	var out []audit.Record
	change := func(m mapping, what string) {
		out = append(out, audit.Record{Event: eventAuthOAuth, Agent: m.agent,
			Reason: fmt.Sprintf("agent %q: OAuth %s %q of %s %s", m.agent, m.claim, m.value, m.issuer, what),
			Attrs:  map[string]string{"change": what, "oauth_issuer": m.issuer, "oauth_claim": m.claim, "oauth_claim_value": m.value, "source": "config"}})
	}
	before, after := mappings(prev), mappings(next)
	for _, m := range after {
		if !slices.Contains(before, m) {
			change(m, "added")
		}
	}
	for _, m := range before {
		if !slices.Contains(after, m) {
			change(m, "removed")
		}
	}
	setting := func(name, was, is string) {
		if was != is {
			out = append(out, audit.Record{Event: eventAuthOAuth, Reason: fmt.Sprintf("auth.oauth %s: %q → %q", name, was, is),
				Attrs: map[string]string{"change": name, "previous": was, "value": is, "source": "config"}})
		}
	}
	var was, is config.OAuth
	if prev != nil {
		was = *prev
	}
	if next != nil {
		is = *next
	}
	setting("audience", was.Audience, is.Audience)
	setting("clock_skew", was.ClockSkew.String(), is.ClockSkew.String())
	setting("keys_max_age", was.KeysMaxAge.String(), is.KeysMaxAge.String())
	for _, iss := range is.Issuers {
		for _, old := range was.Issuers {
			if old.Issuer == iss.Issuer {
				setting(iss.Issuer+" scopes", strings.Join(old.Scopes, " "), strings.Join(iss.Scopes, " "))
				setting(iss.Issuer+" jwks_url", old.JWKSURL, iss.JWKSURL)
				setting(iss.Issuer+" introspection", describeIntrospection(old.Introspection), describeIntrospection(iss.Introspection))
			}
		}
	}
	return out
}

// describeIntrospection says how an issuer's tokens are confirmed, for a
// record of its change.
func describeIntrospection(in *config.OAuthIntrospection) string {
	if in == nil {
		return "off"
	}
	return fmt.Sprintf("client %s, secret in %s, endpoint %s, opaque tokens %v, cache %v",
		in.ClientID, in.ClientSecretFile, cmp.Or(in.URL, "discovered"), in.OpaqueTokens, in.Cache)
}

// byKey maps each of list by its key.
func byKey[T any](list []T, key func(T) string) map[string]T {
	out := make(map[string]T, len(list))
	for _, v := range list {
		out[key(v)] = v
	}
	return out
}

// tokenRecord records a change of who may connect.
func tokenRecord(event, id, role, change string, sum [32]byte) audit.Record {
	token := hex.EncodeToString(sum[:8])
	rec := audit.Record{Event: event, Reason: fmt.Sprintf("%s %q: token %s… %s", strings.TrimSuffix(event, ".token"), id, token, change),
		Attrs: map[string]string{"change": change, "token_sha256": token, "source": "config"}}
	if event == eventAgentToken {
		rec.Agent = id
	} else {
		rec.Attrs["operator_id"], rec.Attrs["role"] = id, role
	}
	return rec
}

// runReload asks a running serve, over its admin listener, to reload its
// configuration file.
func (m *Main) runReload(ctx context.Context, args []string) error {
	fs := newFlagSet("reload", "[-config FILE]",
		"Asks the agentsec serve running with this configuration to read it again and put it\n"+
			"into force, as SIGHUP does, and prints what changed, or why the file was refused\n"+
			"(the running configuration is then kept). The file is checked here first. It posts\n"+
			"to the admin listener (admin.listen) with an admin operator's token, read from\n"+
			"$AGENTSEC_TOKEN or -token-file.\n")
	file := fs.String("config", "agentsec.yaml", "the configuration `file`")
	tokenFile := fs.String("token-file", "", "read the admin operator's bearer token from this `file` instead of $AGENTSEC_TOKEN")
	adminAddr := fs.String("admin", "", "the admin listener's `host:port`, when admin.listen does not say it (port 0)")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return err
	}
	if cfg.Admin.Listen == "" {
		return fmt.Errorf("%s: admin.listen is not set, so serve has no admin listener to ask; send the serve process SIGHUP instead", *file)
	}
	token := os.Getenv("AGENTSEC_TOKEN")
	if *tokenFile != "" {
		data, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("-token-file: %w", err)
		}
		token = strings.TrimSpace(string(data))
	}
	if token == "" {
		return errors.New("no token: set AGENTSEC_TOKEN to an admin operator's bearer token, or use -token-file")
	}
	addr := cfg.Admin.AdminAddress()
	if *adminAddr != "" {
		addr = *adminAddr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: admin.listen: %w", *file, err)
	}
	if port == "0" {
		return fmt.Errorf("%s: admin.listen has port 0, chosen when serve started: name the address serve printed with -admin", *file)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening on every address: this one is among them
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+net.JoinHostPort(host, port)+"/reload", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("asking serve to reload: %w (is agentsec serve running with admin.listen %s?)", err, cfg.Admin.Listen)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s (HTTP %d)", msg, resp.StatusCode)
	}
	// The changes quote the file's names: nothing in them may act on the
	// terminal.
	for line := range strings.SplitSeq(msg, "\n") {
		fmt.Fprintln(m.Stdout, oneLine(line))
	}
	return nil
}
