package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/store/sqlite"
)

// Tokens of the reload tests' callers.
const (
	reloadBotToken     = "ags_reload-bot"
	reloadNewBotToken  = "ags_reload-newbot"
	reloadAdminToken   = "ags_reload-admin"
	reloadAuditorToken = "ags_reload-auditor"
)

// reloadConfig is the reload tests' configuration: "write" requires
// writeLevel; extra is appended.
func reloadConfig(writeLevel, extra string) string {
	return fmt.Sprintf(`namespace: reload-test
trust:
  rules:
    - {tool: read, level: public}
    - {tool: write, level: %s}
  agents:
    - {id: bot, level: verified, token_sha256: %x}
%s
budget: {tokens: 100000, calls: 10}
audit: {path: audit.db, key_file: serve.key}
listen: 127.0.0.1:0
admin: {listen: ":0"}
operators:
  - {id: root, role: admin, token_sha256: %x}
  - {id: ada, role: auditor, token_sha256: %x}
`, writeLevel, sha256.Sum256([]byte(reloadBotToken)), extra,
		sha256.Sum256([]byte(reloadAdminToken)), sha256.Sum256([]byte(reloadAuditorToken)))
}

// A servedConfig is an agentsec serve run in-process on a configuration
// file the test rewrites.
type servedConfig struct {
	t             *testing.T
	dir, file     string
	api, admin    string
	stderr        *syncbuf.Buffer
	cancel        context.CancelFunc
	done          chan error
	stoppedCalled bool
}

func serveConfig(t *testing.T, cfg string) *servedConfig {
	t.Helper()
	dir := t.TempDir()
	skey, _, err := audit.GenerateKey("reload-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "serve.key"), []byte(skey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &servedConfig{t: t, dir: dir, file: filepath.Join(dir, "agentsec.yaml"), stderr: &syncbuf.Buffer{}, done: make(chan error, 1)}
	s.write(cfg)
	m := &Main{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: s.stderr}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- m.Run(ctx, []string{"serve", "-config", s.file}) }()
	apiRE := regexp.MustCompile(`decision API on (http://\S+)/v1/`)
	adminRE := regexp.MustCompile(`admin endpoints on (http://\S+)/ `)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && s.api == ""; time.Sleep(10 * time.Millisecond) {
		if m := apiRE.FindStringSubmatch(s.stderr.String()); m != nil {
			s.api = m[1]
		}
	}
	m1 := adminRE.FindStringSubmatch(s.stderr.String())
	if s.api == "" || m1 == nil {
		t.Fatalf("serve did not start: %s", s.stderr.String())
	}
	s.admin = m1[1]
	t.Cleanup(s.stop)
	return s
}

func (s *servedConfig) write(cfg string) {
	s.t.Helper()
	if err := os.WriteFile(s.file, []byte(cfg), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

func (s *servedConfig) stop() {
	if s.stoppedCalled {
		return
	}
	s.stoppedCalled = true
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		s.t.Error("serve did not stop")
	}
}

// allowed asks the decision API whether the agent of token may call tool.
func (s *servedConfig) allowed(token, tool string) bool {
	s.t.Helper()
	req, _ := http.NewRequest("POST", s.api+"/v1/trust/check", strings.NewReader(`{"tool":"`+tool+`"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Allowed bool }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		s.t.Fatalf("trust check with %s: %d", token, resp.StatusCode)
	}
	return out.Allowed
}

// postReload posts to the admin listener's /reload.
func (s *servedConfig) postReload(token string, headers ...string) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest("POST", s.admin+"/reload", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// records returns the log's records of event, once serve has stopped.
func (s *servedConfig) records(event string) []audit.Record {
	s.t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(s.dir, "audit.db"), sqlite.Options{ReadOnly: true})
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	page, err := audit.Query(context.Background(), st, audit.Filter{Event: event, Limit: audit.MaxLimit})
	if err != nil {
		s.t.Fatal(err)
	}
	return page.Records
}

// agentsec reload: a valid change is in force for the next request and
// recorded, with the admin who asked; a refused one changes nothing; only
// an admin, from no other origin, may ask.
func TestServeReload(t *testing.T) {
	s := serveConfig(t, reloadConfig("privileged", ""))
	if s.allowed(reloadBotToken, "write") {
		t.Fatal("bot may write before the reload")
	}
	s.write(reloadConfig("verified", fmt.Sprintf("    - {id: newbot, level: public, token_sha256: %x}", sha256.Sum256([]byte(reloadNewBotToken)))))

	for _, tt := range []struct {
		name    string
		token   string
		headers []string
		status  int
	}{
		{"no token", "", nil, http.StatusUnauthorized},
		{"an agent's token", reloadBotToken, nil, http.StatusUnauthorized},
		{"an auditor", reloadAuditorToken, nil, http.StatusForbidden},
		{"another origin", reloadAdminToken, []string{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
	} {
		if status, body := s.postReload(tt.token, tt.headers...); status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, status, body, tt.status)
		}
	}
	if s.allowed(reloadBotToken, "write") {
		t.Fatal("a refused reload took effect")
	}

	var stdout bytes.Buffer
	t.Setenv("AGENTSEC_TOKEN", reloadAdminToken)
	m := &Main{Stdout: &stdout, Stderr: io.Discard}
	if err := m.Run(context.Background(), []string{"reload", "-config", s.file, "-admin", strings.TrimPrefix(s.admin, "http://")}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reloaded sha256:", `rule "write": verified (was privileged)`, `agent "newbot": public (new)`, `agent "newbot": token`} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("agentsec reload printed no %q:\n%s", want, stdout.String())
		}
	}
	if !s.allowed(reloadBotToken, "write") || !s.allowed(reloadNewBotToken, "read") {
		t.Error("the reload is not in force")
	}

	// Refused: an invalid file, and a change only a restart applies.
	for name, cfg := range map[string]string{
		"unknown level": reloadConfig("root", ""),
		"budget":        strings.Replace(reloadConfig("verified", ""), "calls: 10", "calls: 20", 1),
	} {
		s.write(cfg)
		err := m.Run(context.Background(), []string{"reload", "-config", s.file, "-admin", strings.TrimPrefix(s.admin, "http://")})
		if err == nil {
			t.Errorf("%s: reloaded", name)
		}
		// The server, asked directly, refuses it too, with the reason.
		status, body := s.postReload(reloadAdminToken)
		if status != http.StatusUnprocessableEntity || !strings.Contains(body, "running configuration is kept") {
			t.Errorf("%s: POST /reload = %d %s", name, status, body)
		}
		if !s.allowed(reloadBotToken, "write") || !s.allowed(reloadNewBotToken, "read") {
			t.Errorf("%s: a refused reload changed what is in force", name)
		}
	}
	// A token the file drops is refused from the next request on.
	s.write(reloadConfig("verified", ""))
	if err := m.Run(context.Background(), []string{"reload", "-config", s.file, "-admin", strings.TrimPrefix(s.admin, "http://")}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", s.api+"/v1/trust/assignments", nil)
	req.Header.Set("Authorization", "Bearer "+reloadNewBotToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a dropped agent's token after the reload: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	s.stop()

	reloads := s.records("config.reload")
	if len(reloads) != 2 || reloads[0].Attrs["operator"] != "root" || !strings.HasPrefix(reloads[0].Attrs["config"], "sha256:") {
		t.Errorf("config.reload records: %+v", reloads)
	}
	rules := s.records("trust.rule")
	if len(rules) != 1 || rules[0].Tool != "write" || rules[0].RequiredLevel != "verified" || rules[0].Attrs["reload"] != reloads[0].Attrs["reload"] {
		t.Errorf("trust.rule records: %+v", rules)
	}
	if tokens := s.records("agent.token"); len(tokens) != 2 || tokens[0].Agent != "newbot" || tokens[0].Attrs["change"] != "added" ||
		tokens[1].Attrs["change"] != "removed" {
		t.Errorf("agent.token records: %+v", tokens)
	}
}

// serve's admin listener serves the console to its operators: a token
// signs in, and the pages answer with the console's protections.
func TestServeConsole(t *testing.T) {
	s := serveConfig(t, reloadConfig("privileged", ""))
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.PostForm(s.admin+"/login", url.Values{"token": {reloadAuditorToken}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ada (viewer)") {
		t.Fatalf("signing in on the admin listener: %d %s", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	for _, path := range []string{"/audit?event=trust.assign", "/agents", "/integrity"} {
		resp, err := c.Get(s.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ada (viewer)") {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	// Operators only: an agent's token does not sign in.
	resp, err = http.PostForm(s.admin+"/login", url.Values{"token": {reloadBotToken}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an agent's token signing in: %d", resp.StatusCode)
	}
}

// TestCredentialChanges: a reload records each token added, removed or
// moved to other scopes — a token that now acts in another scope acts at
// another level — and each operator's role changed; it records nothing
// for the same tokens in another order.
func TestCredentialChanges(t *testing.T) {
	sum := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	oldAgents := []httpapi.Credential{
		{TokenSHA256: sum("a"), Agent: "alice", Scopes: []string{"", "dev"}},
		{TokenSHA256: sum("b"), Agent: "bob", Scopes: []string{""}},
	}
	if got := credentialChanges(oldAgents, []httpapi.Credential{
		{TokenSHA256: sum("b"), Agent: "bob", Scopes: []string{""}},
		{TokenSHA256: sum("a"), Agent: "alice", Scopes: []string{"dev", ""}},
	}, nil, nil); len(got) != 0 {
		t.Errorf("the same tokens in another order: %d records", len(got))
	}
	got := credentialChanges(oldAgents, []httpapi.Credential{
		{TokenSHA256: sum("a"), Agent: "alice", Scopes: []string{"", "prod"}},
		{TokenSHA256: sum("c"), Agent: "carol", Scopes: []string{""}},
	}, []httpapi.Operator{{TokenSHA256: sum("o"), ID: "ops"}}, []httpapi.Operator{{TokenSHA256: sum("o"), ID: "ops", Admin: true}})
	var changes []string
	for _, rec := range got {
		changes = append(changes, rec.Event+" "+rec.Agent+rec.Attrs["operator_id"]+": "+rec.Attrs["change"])
		for k := range rec.Attrs {
			if !audit.ReservedAttr(k) {
				t.Errorf("a %s record carries %q, an attribute a client may set", rec.Event, k)
			}
		}
	}
	want := []string{
		`agent.token alice: scopes ["" "dev"] → ["" "prod"]`,
		"agent.token carol: added",
		"agent.token bob: removed",
		"operator.token ops: role auditor → admin",
	}
	if !slices.Equal(changes, want) {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(changes, "\n"), strings.Join(want, "\n"))
	}
}

// TestReloadRefusesAFileBeingWritten: a file that changes while a reload
// reads it is refused, whatever its parts parse to; one that stays the
// same is read.
func TestReloadRefusesAFileBeingWritten(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agentsec.yaml")
	if err := os.WriteFile(file, []byte("namespace: n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, err := unchangingFor(file, func() {}); err != nil || string(data) != "namespace: n\n" {
		t.Fatalf("a file at rest: %q, %v", data, err)
	}
	more := func() {
		f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString("trust: {}\n"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := unchangingFor(file, more); err == nil || !strings.Contains(err.Error(), "being written") {
		t.Errorf("a file written during the read: %v, want refused", err)
	}
}
