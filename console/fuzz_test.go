package console_test

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/trust"
)

// FuzzConsoleRequests sends a signed-in admin's requests of any path,
// query and form to the console: none may fail inside (5xx) or panic,
// every HTML answer carries the Content-Security-Policy, and a change of
// levels happens only as an answer that says so (a redirect), recorded.
func FuzzConsoleRequests(f *testing.F) {
	f.Add("POST", "/agents/assign", "agent=bot&level=privileged&reason=x")
	f.Add("POST", "/agents/assign", "agent=bot&level=privileged&reason=x&expires=2099-01-01T00:00")
	f.Add("POST", "/agents/revoke", "agent=bot&scope=&reason=%00")
	f.Add("GET", "/audit?since=2026-12-04T09:30&until=x&outcome=deny&cursor=99999999999999999999", "")
	f.Add("GET", "/audit/records/18446744073709551615", "")
	f.Add("GET", "/live?agent=%ff%fe", "")
	f.Add("POST", "/integrity/verify", "")
	f.Add("POST", "/login", "token=%")
	f.Add("GET", "/static/../assets/layout.html", "")
	stack, srv := newConsole(f)
	admin := newBrowser(f, srv)
	admin.login(adminToken)
	f.Fuzz(func(t *testing.T, method, target, form string) {
		if method != "GET" && method != "POST" {
			return
		}
		if _, err := url.ParseRequestURI(target); err != nil || !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "//") {
			return
		}
		if target == "/logout" || strings.HasPrefix(target, "/live/stream") {
			return // ends the fuzzer's session; streams without end
		}
		before := stack.Audit.Size()
		levels := stack.TrustGate.Assignments()
		req, err := http.NewRequest(method, srv.URL+target, strings.NewReader(form))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := admin.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("%s %s %q: %d", method, target, form, resp.StatusCode)
		}
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") && resp.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("%s %s: HTML without a Content-Security-Policy", method, target)
		}
		if !equalLevels(levels, stack.TrustGate.Assignments()) && (resp.StatusCode != http.StatusSeeOther || stack.Audit.Size() == before) {
			t.Errorf("%s %s %q changed a level, answering %d", method, target, form, resp.StatusCode)
		}
	})
}

func equalLevels(a, b []trust.Assignment) bool {
	return slices.EqualFunc(a, b, func(x, y trust.Assignment) bool {
		return x.Agent == y.Agent && x.Scope == y.Scope && x.Level == y.Level && x.Expires.Equal(y.Expires)
	})
}
