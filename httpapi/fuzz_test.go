package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

var stableCodes = []string{"invalid_request", "unauthenticated", "forbidden", "trust_denied", "not_found",
	"conflict", "budget_exceeded", "rate_limited", "audit_unavailable", "budget_unavailable"}

// FuzzRequests sends arbitrary bodies to every route that takes one, as an
// agent and as an admin. Every answer must be JSON — a result, or a
// problem with a stable code and a matching status — and never a server
// error, and the log must verify afterwards.
func FuzzRequests(f *testing.F) {
	s := newTestServer(f, limits{calls: 1000})
	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s", "ttl_seconds": 3600})
	r := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, map[string]any{"ttl_seconds": 3600})
	paths := []string{
		"/v1/trust/check", "/v1/access/v1/evaluation",
		"/v1/budget/sessions/s/reservations", "/v1/budget/reservations/" + r.str("reservation_id") + "/commit",
		"/v1/budget/reservations/" + r.str("reservation_id") + "/release", "/v1/budget/sessions/s/spending",
		"/v1/calls", "/v1/calls/" + b.str("call_id") + "/end", "/v1/audit/events",
	}
	for _, seed := range []string{
		`{"tool":"write"}`, `{"tool":"write","session":"s"}`, `{"tokens":5}`, `{"tokens":-5}`, `{"tokens":1e3}`,
		`{"event":"note","session":"s","attrs":{"k":"v"}}`, `{"event":"tool.call"}`, `{"error":"x","ran":false}`,
		`{"agent":"bob","level":"privileged"}`, `{"subject":{"type":"agent","id":"alice"},"action":{"name":"call"},"resource":{"type":"tool","id":"write"}}`,
		`{"ttl_seconds":1}`, `{"tool":"write","session":"s","scope":"staging"}`, `{"tokens":9007199254740991}`,
		`null`, `[]`, `"x"`, `{`, `{"tool":"\u0000"}`, "{\"event\":\"\xff\"}", `{"attrs":{"":""},"event":"e"}`,
	} {
		for i := range paths {
			f.Add(uint8(i), false, []byte(seed))
		}
	}
	f.Cleanup(s.verify)
	f.Fuzz(func(t *testing.T, route uint8, admin bool, body []byte) {
		path := paths[int(route)%len(paths)]
		token := aliceToken
		if admin {
			token = adminToken
		}
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		s.api.ServeHTTP(w, req)
		var answer map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil {
			t.Fatalf("POST %s %q: the answer is not a JSON object: %v\n%s", path, body, err, w.Body.Bytes())
		}
		if w.Code < 400 {
			return
		}
		code, _ := answer["code"].(string)
		status, _ := answer["status"].(float64)
		switch {
		case !slices.Contains(stableCodes, code):
			t.Fatalf("POST %s %q: code %q is not a stable one: %s", path, body, code, w.Body.Bytes())
		case int(status) != w.Code:
			t.Fatalf("POST %s %q: problem status %v on a %d answer", path, body, status, w.Code)
		case w.Code >= 500 && !strings.HasSuffix(code, "_unavailable"):
			t.Fatalf("POST %s %q: server error %d %s", path, body, w.Code, w.Body.Bytes())
		case w.Header().Get("Content-Type") != "application/problem+json":
			t.Fatalf("POST %s %q: problem as %q", path, body, w.Header().Get("Content-Type"))
		}
		if w.Code == http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q: 503 from a healthy log: %s", path, body, w.Body.Bytes())
		}
	})
}
