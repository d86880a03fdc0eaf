package httpapi_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/internal/syncbuf"
)

// TestAgentsActOnlyAsThemselves: a token can't read, reserve, commit,
// release, end or log as another agent or in another agent's session.
func TestAgentsActOnlyAsThemselves(t *testing.T) {
	s := newTestServer(t, limits{calls: 5})
	res := s.do("POST", "/v1/budget/sessions/shared/reservations", aliceToken, nil)
	call := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "shared"})
	ev := s.do("POST", "/v1/audit/events", aliceToken, map[string]any{"event": "secret", "session": "shared"})
	evID, _ := ev.decisionID()

	// Bob's session of the same name is his own: alice's use is not his.
	if u := s.do("GET", "/v1/budget/sessions/shared", bobToken, nil); u.body["used"].(map[string]any)["calls"].(float64) != 0 {
		t.Errorf("bob sees alice's use of a session of the same name: %s", u.raw)
	}
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
	}{
		{"commit alice's reservation", "POST", "/v1/budget/reservations/" + res.str("reservation_id") + "/commit", map[string]any{"tokens": 1}, 404},
		{"release alice's reservation", "POST", "/v1/budget/reservations/" + res.str("reservation_id") + "/release", nil, 404},
		{"end alice's call", "POST", "/v1/calls/" + call.str("call_id") + "/end", map[string]any{"tokens": 1}, 404},
		{"read alice's record", "GET", fmt.Sprintf("/v1/audit/records/%d", evID), nil, 404},
		{"prove alice's record", "GET", fmt.Sprintf("/v1/audit/records/%d/proof", evID), nil, 404},
		{"query alice's records", "GET", "/v1/audit/records?agent=alice", nil, 403},
		{"check trust as alice", "POST", "/v1/trust/check", map[string]any{"tool": "write", "agent": "alice"}, 403},
		{"evaluate as alice", "POST", "/v1/access/v1/evaluation", map[string]any{"subject": map[string]any{"type": "agent", "id": "alice"},
			"action": map[string]any{"name": "call"}, "resource": map[string]any{"type": "tool", "id": "write"}}, 403},
		{"read alice's budget", "GET", "/v1/budget/sessions/shared?agent=alice", nil, 403},
		{"log as alice", "POST", "/v1/audit/events", map[string]any{"event": "x", "agent": "alice"}, 400},
		{"log a source", "POST", "/v1/audit/events", map[string]any{"event": "x", "attrs": map[string]any{"source": "agentsec"}}, 400},
		{"pass for a decision", "POST", "/v1/audit/events", map[string]any{"event": "tool.call", "outcome": "allow"}, 400},
		{"name a session in a path", "POST", "/v1/budget/sessions/alice%2Fshared/reservations", nil, 400},
		{"use a scope not its token's", "POST", "/v1/calls", map[string]any{"tool": "write", "session": "s", "scope": "staging"}, 403},
	} {
		r := s.do(c.method, c.path, bobToken, c.body)
		if r.status != c.status {
			t.Errorf("bob tries to %s: %d %s, want %d", c.name, r.status, r.raw, c.status)
		}
	}
	// Bob's query, with a session name, reads only his own.
	q := s.do("GET", "/v1/audit/records?session=shared", bobToken, nil)
	if n := len(q.body["records"].([]any)); n != 0 {
		t.Errorf("bob's query of session shared found %d of alice's records", n)
	}
	// Alice's things are untouched.
	if r := s.do("POST", "/v1/budget/reservations/"+res.str("reservation_id")+"/commit", aliceToken, map[string]any{"tokens": 1}); r.status != http.StatusOK {
		t.Errorf("alice's own commit after bob's attempts: %d %s", r.status, r.raw)
	}
	for _, r := range s.records(audit.Filter{}) {
		if r.Agent == "bob" && strings.HasPrefix(r.Session, "alice/") {
			t.Errorf("a record of bob in alice's session: %+v", r)
		}
	}
	s.verify()
}

// TestScopesAreTheTokens: a token acts in the scopes it was configured
// on, so an agent can't raise its level by naming a scope.
func TestScopesAreTheTokens(t *testing.T) {
	s := newTestServer(t, limits{})
	r := s.do("POST", "/v1/trust/check", scopedToken, map[string]any{"tool": "deploy"})
	if r.body["allowed"] != true || r.str("scope") != "staging" {
		t.Errorf("carol's staging token, no scope named: %s", r.raw)
	}
	if r := s.do("POST", "/v1/trust/check", scopedToken, map[string]any{"tool": "deploy", "scope": ""}); r.status != http.StatusForbidden {
		t.Errorf("carol's staging token in the unscoped assignment: %d %s", r.status, r.raw)
	}
	if r := s.do("POST", "/v1/trust/check", aliceToken, map[string]any{"tool": "deploy", "scope": "staging"}); r.status != http.StatusForbidden {
		t.Errorf("alice naming a scope her token lacks: %d %s", r.status, r.raw)
	}
}

// TestUnauthenticated: every route but the OpenAPI document answers 401
// with WWW-Authenticate to a request with no token, or a wrong one, and
// reveals nothing else.
func TestUnauthenticated(t *testing.T) {
	s := newTestServer(t, limits{})
	for _, token := range []string{"", "not-a-token", "alice-token-x", strings.ToUpper(aliceToken)} {
		for _, c := range []struct{ method, path string }{
			{"POST", "/v1/trust/check"}, {"POST", "/v1/calls"}, {"POST", "/v1/calls/c_x/end"},
			{"GET", "/v1/budget/sessions/s"}, {"GET", "/v1/audit/records"}, {"GET", "/v1/audit/checkpoint"},
			{"GET", "/v1/no/such/route"}, {"PUT", "/v1/calls"},
		} {
			r := s.do(c.method, c.path, token, map[string]any{})
			if r.status != http.StatusUnauthorized || r.code() != "unauthenticated" || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s with token %q: %d %q %s", c.method, c.path, token, r.status, r.header.Get("WWW-Authenticate"), r.raw)
			}
		}
	}
	if r := s.do("GET", "/v1/openapi.json", "", nil); r.status != http.StatusOK {
		t.Errorf("the OpenAPI document without a token: %d", r.status)
	}
}

// TestNoForgedRecords: a caller can't dress a record up as agentsec's own:
// not with an event name of agentsec's, in any case, nor with an
// attribute agentsec sets, on an event or on a call.
func TestNoForgedRecords(t *testing.T) {
	s := newTestServer(t, limits{})
	size := s.stack.Audit.Size()
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/audit/events", map[string]any{"event": "Tool.Call", "outcome": "allow"}},
		{"/v1/audit/events", map[string]any{"event": "health.probe"}},
		{"/v1/audit/events", map[string]any{"event": "note", "attrs": map[string]any{"Operator": "root"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"operator": "root"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"withheld_tokens": "999"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"source": "config"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"OAuth_Subject": "ceo@example.com"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"task": "t-1"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"reload": "3cd48dff56af4ee8"}}},
		{"/v1/calls", map[string]any{"tool": "write", "session": "s", "attrs": map[string]any{"signature": "x"}}},
		{"/v1/audit/events", map[string]any{"event": "auth.oauth"}},
		{"/v1/audit/events", map[string]any{"event": "Auth.Refused"}},
	} {
		if r := s.do("POST", c.path, aliceToken, c.body); r.status != http.StatusBadRequest || r.code() != "invalid_request" {
			t.Errorf("POST %s %v: %d %s, want 400 invalid_request", c.path, c.body, r.status, r.raw)
		}
	}
	if s.stack.Audit.Size() != size {
		t.Errorf("forged records were written")
	}
}

// TestStoreFailuresStayOnTheServer: when the audit log fails, a caller is
// told what failed and to try again, and the store's own error — which
// may name a path, a host or a database user — goes to the server's log,
// not into the answer.
func TestStoreFailuresStayOnTheServer(t *testing.T) {
	s := newTestServer(t, limits{})
	var logged syncbuf.Buffer
	s.api.Log = slog.New(slog.NewTextHandler(&logged, nil))
	s.audit.Fail.Store(true)
	for _, c := range []struct {
		method, path string
		body         map[string]any
	}{
		{"POST", "/v1/audit/events", map[string]any{"event": "note"}},
		{"POST", "/v1/calls", map[string]any{"tool": "write", "session": "s"}},
		{"POST", "/v1/budget/sessions/s/spending", map[string]any{"tokens": 1}},
		{"POST", "/v1/trust/assignments", map[string]any{"agent": "bob", "level": "verified", "reason": "promoted"}},
	} {
		token := aliceToken
		if strings.HasPrefix(c.path, "/v1/trust/") {
			token = adminToken
		}
		r := s.do(c.method, c.path, token, c.body)
		if r.status != http.StatusServiceUnavailable || r.code() != "audit_unavailable" {
			t.Errorf("%s %s with the log failing: %d %s, want 503 audit_unavailable", c.method, c.path, r.status, r.raw)
		}
		if strings.Contains(string(r.raw), audittest.ErrInjected.Error()) {
			t.Errorf("%s %s: the store's error reached the caller: %s", c.method, c.path, r.raw)
		}
	}
	if !strings.Contains(logged.String(), audittest.ErrInjected.Error()) {
		t.Errorf("the store's error is not in the server's log: %q", logged.String())
	}
}
