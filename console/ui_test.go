package console_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/trust"
)

// Tokens of the console's operators.
const (
	adminToken  = "ags_console-admin"
	viewerToken = "ags_console-viewer"
)

// consoleOperators knows the two operators by their tokens' hashes.
func consoleOperators(sum [32]byte) (string, bool, bool) {
	switch sum {
	case sha256.Sum256([]byte(adminToken)):
		return "root", true, true
	case sha256.Sum256([]byte(viewerToken)):
		return "ada", false, true
	}
	return "", false, false
}

// newConsole serves the console of a stack whose log is signed and
// checkpointed after every record.
func newConsole(t testing.TB) (*agentsec.Stack, *httptest.Server) {
	t.Helper()
	key, _, err := audit.GenerateKey("console")
	if err != nil {
		t.Fatal(err)
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules:  []trust.Rule{{Tool: "read", Level: "public"}, {Tool: "deploy", Level: "privileged"}},
			Agents: []trust.Assignment{{Agent: "bot", Level: "public"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 1000},
		AuditNamespace: "console",
		Audit:          agentsec.AuditConfig{Store: audit.NewMemoryStore(), SignerKey: key, CheckpointEvery: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack, Operator: consoleOperators}))
	t.Cleanup(func() {
		srv.Close()
		stack.Close()
	})
	return stack, srv
}

// browser is an HTTP client with cookies that does not follow redirects.
type browser struct {
	t   testing.TB
	srv *httptest.Server
	c   *http.Client
}

func newBrowser(t testing.TB, srv *httptest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(method, path string, form url.Values, headers ...string) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func (b *browser) login(token string) {
	b.t.Helper()
	resp, body := b.do("POST", "/login", url.Values{"token": {token}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/live" {
		b.t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
}

// Signing in: a wrong token is refused; a right one gets a session cookie
// that scripts can't read and other sites can't send; pages need it, and
// carry a strict Content-Security-Policy.
func TestConsoleLogin(t *testing.T) {
	_, srv := newConsole(t)
	b := newBrowser(t, srv)
	if resp, _ := b.do("GET", "/live", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Errorf("/live before signing in: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := b.do("GET", "/live/stream", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/live/stream before signing in: %d", resp.StatusCode)
	}
	for _, token := range []string{"", "ags_wrong"} {
		if resp, body := b.do("POST", "/login", url.Values{"token": {token}}); resp.StatusCode != http.StatusUnauthorized ||
			!strings.Contains(body, "not an operator") {
			t.Errorf("login with %q: %d", token, resp.StatusCode)
		}
	}
	resp, _ := b.do("POST", "/login", url.Values{"token": {viewerToken}})
	cookie := resp.Header.Get("Set-Cookie")
	for _, want := range []string{"agentsec_console=", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(cookie, want) {
			t.Errorf("session cookie %q lacks %s", cookie, want)
		}
	}
	if strings.Contains(cookie, "Secure") {
		t.Errorf("session cookie %q is Secure on plain-HTTP loopback, where the browser would never send it back", cookie)
	}
	resp, body := b.do("GET", "/live", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "ada (viewer)") {
		t.Errorf("/live signed in: %d", resp.StatusCode)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %s", csp, want)
		}
	}
	if strings.Contains(body, "<script>") || strings.Contains(csp, "unsafe-inline") {
		t.Error("a page has inline script, or the CSP allows it")
	}
	b.do("POST", "/logout", url.Values{})
	if resp, _ := b.do("GET", "/live", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("/live after logging out: %d", resp.StatusCode)
	}
}

// Only an admin changes a level, from this console's own pages: a viewer
// sees no controls and gets 403; a request from another origin, a form
// too big or missing its reason is refused; nothing changes.
func TestConsoleChangesRefused(t *testing.T) {
	stack, srv := newConsole(t)
	viewer := newBrowser(t, srv)
	viewer.login(viewerToken)
	_, page := viewer.do("GET", "/agents", nil)
	if strings.Contains(page, `action="/agents/assign"`) || strings.Contains(page, `action="/agents/revoke"`) {
		t.Error("a viewer sees the controls")
	}
	raise := url.Values{"agent": {"bot"}, "level": {"privileged"}, "reason": {"x"}}
	if resp, _ := viewer.do("POST", "/agents/assign", raise); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer's assignment: %d", resp.StatusCode)
	}
	if resp, _ := viewer.do("POST", "/agents/revoke", url.Values{"agent": {"bot"}, "reason": {"x"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer's revocation: %d", resp.StatusCode)
	}

	admin := newBrowser(t, srv)
	admin.login(adminToken)
	_, page = admin.do("GET", "/agents", nil)
	if !strings.Contains(page, `action="/agents/assign"`) {
		t.Error("an admin sees no controls")
	}
	size := stack.Audit.Size()
	for name, tt := range map[string]struct {
		form    url.Values
		headers []string
		status  int
	}{
		"another origin":  {raise, []string{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		"no reason":       {url.Values{"agent": {"bot"}, "level": {"privileged"}}, nil, http.StatusBadRequest},
		"unknown level":   {url.Values{"agent": {"bot"}, "level": {"root"}, "reason": {"x"}}, nil, http.StatusBadRequest},
		"bad expiry":      {url.Values{"agent": {"bot"}, "level": {"privileged"}, "reason": {"x"}, "expires": {"soon"}}, nil, http.StatusBadRequest},
		"expired":         {url.Values{"agent": {"bot"}, "level": {"privileged"}, "reason": {"x"}, "expires": {"2001-01-01T00:00"}}, nil, http.StatusBadRequest},
		"oversize":        {url.Values{"agent": {"bot"}, "level": {"privileged"}, "reason": {strings.Repeat("x", 70<<10)}}, nil, http.StatusRequestEntityTooLarge},
		"no agent":        {url.Values{"level": {"privileged"}, "reason": {"x"}}, nil, http.StatusBadRequest},
		"control charact": {url.Values{"agent": {"bot\x1b[2J"}, "level": {"privileged"}, "reason": {"x"}}, nil, http.StatusBadRequest},
	} {
		if resp, body := admin.do("POST", "/agents/assign", tt.form, tt.headers...); resp.StatusCode != tt.status {
			t.Errorf("%s: %d, want %d: %.300s", name, resp.StatusCode, tt.status, body)
		}
	}
	if resp, err := admin.c.Post(srv.URL+"/agents/assign", "application/x-www-form-urlencoded", strings.NewReader("agent=%zz&level=privileged")); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a malformed form: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	if resp, _ := admin.do("POST", "/agents/revoke", url.Values{"agent": {"nobody"}, "reason": {"x"}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("revoking no assignment: %d", resp.StatusCode)
	}
	if stack.Audit.Size() != size {
		t.Errorf("refused changes appended %d records", stack.Audit.Size()-size)
	}
	if d := stack.TrustGate.Check(agentsec.Request{Agent: "bot", Tool: "deploy"}); d.Allowed {
		t.Error("a refused change took effect")
	}

	// The admin's change: recorded with the admin's id, then in force.
	resp, _ := admin.do("POST", "/agents/assign", raise)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/agents?done=") {
		t.Fatalf("an admin's assignment: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if d := stack.TrustGate.Check(agentsec.Request{Agent: "bot", Tool: "deploy"}); !d.Allowed {
		t.Error("the admin's change is not in force")
	}
	page2, err := stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventTrustAssign, Agent: "bot", Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	last := page2.Records[len(page2.Records)-1]
	if last.Attrs["operator"] != "root" || last.Reason != "x" || last.AssignedLevel != "privileged" {
		t.Errorf("the change's record: %+v", last)
	}
}

// The audit search finds records by its filters; a record's page shows
// its canonical bytes, leaf hash and an inclusion proof.
func TestConsoleAuditSearch(t *testing.T) {
	stack, srv := newConsole(t)
	ctx := context.Background()
	for _, tool := range []string{"read", "deploy", "read"} {
		stack.Guard(ctx, agentsec.Request{Agent: "bot", Session: "s1", Tool: tool}, func(context.Context) (int64, error) { return 3, nil })
	}
	b := newBrowser(t, srv)
	b.login(viewerToken)
	resp, body := b.do("GET", "/audit?outcome=deny&session=s1", nil)
	if resp.StatusCode != http.StatusOK || strings.Count(body, `class="deny"`) != 1 || !strings.Contains(body, "deploy") {
		t.Errorf("denials of s1: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ := b.do("GET", "/audit?since=yesterday", nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a malformed time: %d", resp.StatusCode)
	}
	if resp, _ := b.do("GET", "/audit?outcome=maybe", nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a malformed outcome: %d", resp.StatusCode)
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Tool: "deploy"})
	if err != nil || len(page.Records) != 1 {
		t.Fatal(err)
	}
	seq := page.Records[0].Seq
	resp, body = b.do("GET", "/audit/records/"+strconv.FormatUint(seq, 10), nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="leaf-hash"`) || !strings.Contains(body, `id="proof"`) ||
		strings.Contains(body, "No signed checkpoint covers") {
		t.Errorf("record %d: %d\n%s", seq, resp.StatusCode, body)
	}
	for path, status := range map[string]int{"/audit/records/999": http.StatusNotFound, "/audit/records/-1": http.StatusBadRequest} {
		if resp, _ := b.do("GET", path, nil); resp.StatusCode != status {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, status)
		}
	}
}

// tampered is a copy of a log in which one record's bytes were changed
// after it was written: Scan returns them edited.
type tampered struct {
	audit.Store
	seq uint64
}

func (s tampered) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	return s.Store.Scan(ctx, from, to, func(e audit.Entry) error {
		if e.Seq == s.seq {
			e.Data = []byte(strings.Replace(string(e.Data), `"deny"`, `"allow"`, 1))
		}
		return fn(e)
	})
}

// copyLog returns a copy of a log's store: its entries and checkpoints.
func copyLog(t testing.TB, src audit.Store) audit.Store {
	t.Helper()
	ctx := context.Background()
	dst := audit.NewMemoryStore()
	size, err := src.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var entries []audit.Entry
	err = src.Scan(ctx, 0, size, func(e audit.Entry) error {
		entries = append(entries, audit.Entry{Seq: e.Seq, Data: slices.Clone(e.Data), Hashes: slices.Clone(e.Hashes)})
		return nil
	})
	if err == nil {
		err = dst.Append(ctx, entries)
	}
	if err == nil {
		err = src.Checkpoints(ctx, func(size uint64, signed []byte) error { return dst.AddCheckpoint(ctx, size, signed) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// consoleOver serves the console of a stack on store, signed with key.
func consoleOver(t testing.TB, store audit.Store, key string) (*agentsec.Stack, *httptest.Server) {
	t.Helper()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules:  []trust.Rule{{Tool: "read", Level: "public"}, {Tool: "deploy", Level: "privileged"}},
			Agents: []trust.Assignment{{Agent: "bot", Level: "public"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: 1 << 40},
		AuditNamespace: "console",
		Audit:          agentsec.AuditConfig{Store: store, SignerKey: key, CheckpointEvery: 1000, CheckpointInterval: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack, Operator: consoleOperators, CheckpointCopies: "/mnt/anchor/"}))
	t.Cleanup(func() {
		srv.Close()
		stack.Close()
	})
	return stack, srv
}

// tamperedLog writes calls, one denied at its middle, to a log, and
// returns the log's store, its key, and the denial's position.
func tamperedLog(t testing.TB, calls int) (audit.Store, string, uint64) {
	t.Helper()
	key, _, err := audit.GenerateKey("console")
	if err != nil {
		t.Fatal(err)
	}
	store := audit.NewMemoryStore()
	stack, _ := consoleOver(t, store, key)
	ctx := context.Background()
	var bad uint64
	for i := range calls {
		tool := "read"
		if i == calls/2 {
			tool, bad = "deploy", stack.Audit.Size()
		}
		stack.Guard(ctx, agentsec.Request{Agent: "bot", Session: "s", Tool: tool}, func(context.Context) (int64, error) { return 1, nil })
	}
	stack.Close()
	return store, key, bad
}

// waitVerified polls /integrity/status until the verification ends.
func waitVerified(t *testing.T, b *browser) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, body := b.do("GET", "/integrity/status", nil)
		if strings.Contains(body, `"running":false`) {
			return body
		}
	}
	t.Fatal("the verification did not end")
	return ""
}

// The integrity page verifies the whole log, and names the first bad
// record of a log changed after it was written.
func TestConsoleIntegrity(t *testing.T) {
	store, key, bad := tamperedLog(t, 200)
	_, srv := consoleOver(t, store, key)
	b := newBrowser(t, srv)
	b.login(viewerToken)
	_, page := b.do("GET", "/integrity", nil)
	for _, want := range []string{"/mnt/anchor/", "Verify the whole log"} {
		if !strings.Contains(page, want) {
			t.Errorf("the integrity page lacks %q", want)
		}
	}
	if resp, _ := b.do("POST", "/integrity/verify", url.Values{}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("starting a verification: %d", resp.StatusCode)
	}
	if status := waitVerified(t, b); strings.Contains(status, `"failed"`) || !strings.Contains(status, `"done":202,"total":202`) {
		t.Errorf("an intact log: %s", status)
	}
	_, page = b.do("GET", "/integrity", nil)
	if !strings.Contains(page, "Verified ") {
		t.Errorf("the result is not on the page:\n%s", page)
	}

	_, tsrv := consoleOver(t, tampered{copyLog(t, store), bad}, key)
	tb := newBrowser(t, tsrv)
	tb.login(viewerToken)
	tb.do("POST", "/integrity/verify", url.Values{})
	status := waitVerified(t, tb)
	if !strings.Contains(status, `"failed":true`) || !strings.Contains(status, `"bad_seq":`+strconv.FormatUint(bad, 10)) {
		t.Errorf("the tampered copy: %s, want record %d named", status, bad)
	}
	_, page = tb.do("GET", "/integrity", nil)
	if !strings.Contains(page, `href="/audit/records/`+strconv.FormatUint(bad, 10)+`"`) {
		t.Errorf("the page does not link the first bad record:\n%s", page)
	}
}

// The sessions page shows a gateway's sessions with their budgets; an
// admin ends one — recorded first, with the admin's id and reason — and
// its client can't use it again; a viewer can't.
func TestConsoleSessions(t *testing.T) {
	stack, srv, cs := consoleWithGateway(t)
	ctx := context.Background()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read"}); err != nil {
		t.Fatal(err)
	}
	viewer := newBrowser(t, srv)
	viewer.login(viewerToken)
	_, page := viewer.do("GET", "/sessions", nil)
	if !strings.Contains(page, cs.ID()) || !strings.Contains(page, "1 of 1000") || strings.Contains(page, `action="/sessions/end"`) {
		t.Errorf("the viewer's sessions page:\n%s", page)
	}
	if resp, _ := viewer.do("POST", "/sessions/end", url.Values{"session": {cs.ID()}, "reason": {"x"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer ending a session: %d", resp.StatusCode)
	}
	admin := newBrowser(t, srv)
	admin.login(adminToken)
	for name, tt := range map[string]struct {
		form   url.Values
		status int
	}{
		"no reason":       {url.Values{"session": {cs.ID()}}, http.StatusBadRequest},
		"unknown session": {url.Values{"session": {"nope"}, "reason": {"x"}}, http.StatusNotFound},
	} {
		if resp, _ := admin.do("POST", "/sessions/end", tt.form); resp.StatusCode != tt.status {
			t.Errorf("%s: %d, want %d", name, resp.StatusCode, tt.status)
		}
	}
	resp, _ := admin.do("POST", "/sessions/end", url.Values{"session": {cs.ID()}, "reason": {"runaway loop"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("ending the session: %d", resp.StatusCode)
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read"}); err == nil {
		t.Error("the ended session still calls tools")
	}
	page2, err := stack.Audit.Query(ctx, audit.Filter{Event: console.EventSessionEnd})
	if err != nil || len(page2.Records) != 1 || page2.Records[0].Session != cs.ID() ||
		page2.Records[0].Attrs["operator"] != "root" || page2.Records[0].Reason != "runaway loop" {
		t.Errorf("session.end records: %+v %v", page2.Records, err)
	}
	if _, page = admin.do("GET", "/sessions", nil); strings.Contains(page, cs.ID()) {
		t.Error("the ended session is still listed")
	}
}

// The audit search's export: every record the search matches, as CSV or
// JSON lines whose leaf hashes are the records' own.
func TestConsoleExport(t *testing.T) {
	stack, srv := newConsole(t)
	ctx := context.Background()
	for i := range 150 {
		tool := "read"
		if i%3 == 0 {
			tool = "deploy"
		}
		stack.Guard(ctx, agentsec.Request{Agent: "bot", Session: "s1", Tool: tool}, func(context.Context) (int64, error) { return 1, nil })
	}
	b := newBrowser(t, srv)
	b.login(viewerToken)
	_, page := b.do("GET", "/audit?session=s1&outcome=deny", nil)
	link := regexp.MustCompile(`id="export-csv" href="([^"]+)"`).FindStringSubmatch(page)
	if link == nil {
		t.Fatalf("no export link:\n%s", page)
	}
	resp, body := b.do("GET", html.UnescapeString(link[1]), nil)
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if resp.StatusCode != http.StatusOK || err != nil || len(rows) != 1+50 || resp.Header.Get("Content-Disposition") == "" {
		t.Fatalf("CSV export: %d, %d rows (%v), %q", resp.StatusCode, len(rows), err, resp.Header.Get("Content-Disposition"))
	}
	for _, row := range rows[1:] {
		if row[6] != "deploy" || row[8] != "deny" {
			t.Errorf("exported a record the search does not match: %v", row)
		}
	}
	resp, body = b.do("GET", "/audit/export?session=s1&format=jsonl", nil)
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if resp.StatusCode != http.StatusOK || len(lines) != 150 {
		t.Fatalf("JSON lines export: %d, %d lines", resp.StatusCode, len(lines))
	}
	var first struct {
		LeafHash string          `json:"leaf_hash"`
		Record   json.RawMessage `json:"record"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if h := tlog.RecordHash(first.Record); base64.StdEncoding.EncodeToString(h[:]) != first.LeafHash {
		t.Errorf("the first line's leaf hash is not its record's")
	}
	for path, status := range map[string]int{
		"/audit/export?format=xml":              http.StatusBadRequest,
		"/audit/export?format=csv&since=nope":   http.StatusBadRequest,
		"/audit/export?format=csv&outcome=most": http.StatusBadRequest,
	} {
		if resp, _ := b.do("GET", path, nil); resp.StatusCode != status {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, status)
		}
	}
}

// The live stream outlasts the listener's write timeout, sends what was
// appended since the position the page names (?from=, or Last-Event-ID
// when it reconnects), and goes on with what is appended after.
func TestConsoleLiveStream(t *testing.T) {
	stack, _ := newConsole(t)
	srv := httptest.NewUnstartedServer(console.Handler(console.Config{Stack: stack, Operator: consoleOperators}))
	srv.Config.WriteTimeout = 500 * time.Millisecond
	srv.Start()
	defer srv.Close()
	ctx := context.Background()
	call := func(tool string) {
		stack.Guard(ctx, agentsec.Request{Agent: "bot", Session: "s", Tool: tool}, func(context.Context) (int64, error) { return 1, nil })
	}
	from := stack.Audit.Size()
	call("deploy") // before the stream opens, after the page was rendered
	b := newBrowser(t, srv)
	b.login(viewerToken)
	req, _ := http.NewRequest("GET", srv.URL+"/live/stream?from="+strconv.FormatUint(from, 10), nil)
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := b.c.Do(req.WithContext(sctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := make(chan string, 16)
	go func() {
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			if data, ok := strings.CutPrefix(lines.Text(), "data: "); ok {
				events <- data
			}
		}
		close(events)
	}()
	next := func() string {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return ""
	}
	if e := next(); !strings.Contains(e, `"tool":"deploy"`) || !strings.Contains(e, `"outcome":"deny"`) {
		t.Errorf("the call made before the stream opened: %s", e)
	}
	time.Sleep(time.Second) // past the listener's write timeout
	call("read")
	if e := next(); !strings.Contains(e, `"tool":"read"`) {
		t.Errorf("after the write timeout: %s", e)
	}
}

// Off loopback the session cookie is Secure, which a browser keeps only
// from HTTPS: sign-in over plain HTTP is refused, saying why; behind a
// TLS proxy it works, and the cookie is Secure.
func TestConsoleLoginOffLoopback(t *testing.T) {
	stack, _ := newConsole(t)
	h := console.Handler(console.Config{Stack: stack, Operator: consoleOperators})
	login := func(proto string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "http://admin.example/login", strings.NewReader(url.Values{"token": {adminToken}}.Encode()))
		req.RemoteAddr = "10.0.0.5:41000"
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if proto != "" {
			req.Header.Set("X-Forwarded-Proto", proto)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	if w := login(""); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "needs HTTPS") {
		t.Errorf("plain HTTP off loopback: %d", w.Code)
	}
	w := login("https")
	if w.Code != http.StatusSeeOther || !strings.Contains(w.Header().Get("Set-Cookie"), "Secure") {
		t.Errorf("behind a TLS proxy: %d, cookie %q", w.Code, w.Header().Get("Set-Cookie"))
	}
}

// A session's end whose reason the log can't hold is refused (400), and
// the session goes on.
func TestConsoleSessionEndBadReason(t *testing.T) {
	_, srv, cs := consoleWithGateway(t)
	admin := newBrowser(t, srv)
	admin.login(adminToken)
	resp, _ := admin.do("POST", "/sessions/end", url.Values{"session": {cs.ID()}, "reason": {"bad \xff utf-8"}})
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a reason that is not UTF-8: %d", resp.StatusCode)
	}
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "read"}); err != nil {
		t.Errorf("the session ended anyway: %v", err)
	}
}

// An operator signing in over and over can't grow the console's sessions
// past their bound, nor lock anyone out: the oldest session makes room.
func TestConsoleLoginFlood(t *testing.T) {
	stack, _ := newConsole(t)
	h := console.Handler(console.Config{Stack: stack, Operator: consoleOperators})
	login := func(token string) string {
		req := httptest.NewRequest("POST", "http://127.0.0.1/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.RemoteAddr = "127.0.0.1:41000"
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusSeeOther {
			t.Fatalf("login: %d", w.Code)
		}
		return strings.Split(w.Header().Get("Set-Cookie"), ";")[0]
	}
	signedIn := func(cookie string) bool {
		req := httptest.NewRequest("GET", "http://127.0.0.1/agents", nil)
		req.Header.Set("Cookie", cookie)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code == http.StatusOK
	}
	first := login(viewerToken)
	var flood []string
	for range 10_000 {
		flood = append(flood, login(adminToken))
	}
	// The flooder holds its last 16 sessions, and signs no one else out.
	if !signedIn(first) {
		t.Error("one operator signing in 10,000 times signed another out")
	}
	if n := len(flood); signedIn(flood[n-17]) || !signedIn(flood[n-16]) || !signedIn(flood[n-1]) {
		t.Error("the flooding operator does not hold exactly its last 16 sessions")
	}
	if last := login(viewerToken); !signedIn(last) {
		t.Error("after the flood, an operator can't sign in")
	}
	// Behind a TLS proxy on the same host, the cookie is Secure: the
	// browser must not send it over plain HTTP to that host.
	req := httptest.NewRequest("POST", "http://127.0.0.1/login", strings.NewReader(url.Values{"token": {viewerToken}}.Encode()))
	req.RemoteAddr = "127.0.0.1:41000"
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-Proto", "https")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if cookie := w.Header().Get("Set-Cookie"); w.Code != http.StatusSeeOther || !strings.Contains(cookie, "Secure") {
		t.Errorf("login through a loopback TLS proxy: %d, cookie %q is not Secure", w.Code, cookie)
	}
}

// Live views are bounded, per operator and in all: each holds a queue
// of records. An operator past its bound gets 503; another still opens
// one.
func TestConsoleLiveViewsBounded(t *testing.T) {
	_, srv := newConsole(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(b *browser) int {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/live/stream", nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
		}
		return resp.StatusCode
	}
	viewer, admin := newBrowser(t, srv), newBrowser(t, srv)
	viewer.login(viewerToken)
	admin.login(adminToken)
	for i := range 8 {
		if code := open(viewer); code != http.StatusOK {
			t.Fatalf("live view %d: %d", i+1, code)
		}
	}
	if code := open(viewer); code != http.StatusServiceUnavailable {
		t.Errorf("a ninth live view of one operator: %d, want 503", code)
	}
	if code := open(admin); code != http.StatusOK {
		t.Errorf("another operator's live view: %d, want 200", code)
	}
}

// A view that asks for more than it can catch up on is told so ("gap"),
// and its stream ends, rather than skip over the hole unseen.
func TestConsoleLiveStreamGap(t *testing.T) {
	stack, srv := newConsole(t)
	ctx := context.Background()
	for range 1100 {
		stack.Guard(ctx, agentsec.Request{Agent: "bot", Session: "s", Tool: "read"}, func(context.Context) (int64, error) { return 1, nil })
	}
	b := newBrowser(t, srv)
	b.login(viewerToken)
	resp, body := b.do("GET", "/live/stream?from=0", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "event: gap") || strings.Contains(body, "event: record") {
		t.Errorf("a stream 1,100 records behind: %d\n%.300s", resp.StatusCode, body)
	}
}
