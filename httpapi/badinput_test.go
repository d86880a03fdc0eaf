package httpapi_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
)

// TestBadInput: each malformed request gets its problem and stable code,
// nothing is recorded for it, the server goes on serving, and the log
// verifies.
func TestBadInput(t *testing.T) {
	s := newTestServer(t, limits{calls: 10})
	res := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil).str("reservation_id")
	committed := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil).str("reservation_id")
	s.do("POST", "/v1/budget/reservations/"+committed+"/commit", aliceToken, map[string]any{"tokens": 1})
	bobs := s.do("POST", "/v1/budget/sessions/s/reservations", bobToken, nil).str("reservation_id")
	before := s.stack.Audit.Size()

	huge := []byte(`{"event":"x","reason":"` + strings.Repeat("a", 70<<10) + `"}`)
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"malformed JSON", "POST", "/v1/calls", []byte(`{"tool":"write",`), 400, "invalid_request"},
		{"not an object", "POST", "/v1/calls", []byte(`["write"]`), 400, "invalid_request"},
		{"two values", "POST", "/v1/trust/check", []byte(`{"tool":"write"}{}`), 400, "invalid_request"},
		{"unknown field", "POST", "/v1/calls", map[string]any{"tool": "write", "session": "s", "agent": "alice"}, 400, "invalid_request"},
		{"wrong type", "POST", "/v1/calls", map[string]any{"tool": 7, "session": "s"}, 400, "invalid_request"},
		{"string tokens", "POST", "/v1/budget/reservations/" + res + "/commit", []byte(`{"tokens":"5"}`), 400, "invalid_request"},
		{"negative tokens", "POST", "/v1/budget/reservations/" + res + "/commit", map[string]any{"tokens": -1}, 400, "invalid_request"},
		{"fractional tokens", "POST", "/v1/budget/reservations/" + res + "/commit", []byte(`{"tokens":1.5}`), 400, "invalid_request"},
		{"tokens past 2^53", "POST", "/v1/budget/reservations/" + res + "/commit", []byte(`{"tokens":9007199254740992}`), 400, "invalid_request"},
		{"tokens past int64", "POST", "/v1/budget/sessions/s/spending", []byte(`{"tokens":99999999999999999999}`), 400, "invalid_request"},
		{"oversize body", "POST", "/v1/audit/events", huge, 413, "invalid_request"},
		{"invalid UTF-8", "POST", "/v1/audit/events", []byte("{\"event\":\"\xff\"}"), 400, "invalid_request"},
		{"ttl too long", "POST", "/v1/budget/sessions/s/reservations", map[string]any{"ttl_seconds": 3601}, 400, "invalid_request"},
		{"empty session", "POST", "/v1/calls", map[string]any{"tool": "write", "session": ""}, 400, "invalid_request"},
		{"control in session", "POST", "/v1/calls", map[string]any{"tool": "write", "session": "a\nb"}, 400, "invalid_request"},
		{"long session", "GET", "/v1/budget/sessions/" + strings.Repeat("s", 201), nil, 400, "invalid_request"},
		{"unknown reservation", "POST", "/v1/budget/reservations/r_nothing/commit", map[string]any{"tokens": 1}, 404, "not_found"},
		{"foreign reservation", "POST", "/v1/budget/reservations/" + bobs + "/commit", map[string]any{"tokens": 1}, 404, "not_found"},
		{"committed reservation", "POST", "/v1/budget/reservations/" + committed + "/commit", map[string]any{"tokens": 1}, 409, "conflict"},
		{"release of a committed reservation", "POST", "/v1/budget/reservations/" + committed + "/release", nil, 409, "conflict"},
		{"a reservation as a call", "POST", "/v1/calls/" + res + "/end", map[string]any{"tokens": 1}, 404, "not_found"},
		{"bad record index", "GET", "/v1/audit/records/-1", nil, 400, "invalid_request"},
		{"record past the end", "GET", "/v1/audit/records/999999", nil, 404, "not_found"},
		{"unknown query parameter", "GET", "/v1/audit/records?agnet=x", nil, 400, "invalid_request"},
		{"bad time", "GET", "/v1/audit/records?since=yesterday", nil, 400, "invalid_request"},
		{"bad limit", "GET", "/v1/audit/records?limit=0", nil, 400, "invalid_request"},
		{"bad outcome", "GET", "/v1/audit/records?outcome=maybe", nil, 400, "invalid_request"},
		{"bad cursor", "GET", "/v1/audit/records?cursor=zzz", nil, 400, "invalid_request"},
		{"wrong method", "PUT", "/v1/calls", map[string]any{}, 405, "invalid_request"},
		{"unknown route", "GET", "/v1/nothing", nil, 404, "not_found"},
		{"AuthZEN: other action", "POST", "/v1/access/v1/evaluation", map[string]any{"action": map[string]any{"name": "delete"},
			"resource": map[string]any{"type": "tool", "id": "write"}}, 400, "invalid_request"},
		{"no tool", "POST", "/v1/trust/check", map[string]any{}, 400, "invalid_request"},
	} {
		r := s.do(c.method, c.path, aliceToken, c.body)
		if r.status != c.status || r.code() != c.code {
			t.Errorf("%s: %d %q %s, want %d %q", c.name, r.status, r.code(), r.raw, c.status, c.code)
		}
	}
	// Nothing was recorded for them, and the reservation they aimed at is
	// still open.
	if after := s.stack.Audit.Size(); after != before {
		for _, r := range s.records(audit.Filter{})[before:] {
			t.Errorf("a bad request was recorded: %+v", r)
		}
	}
	if r := s.do("POST", "/v1/budget/reservations/"+res+"/commit", aliceToken, map[string]any{"tokens": 2}); r.status != http.StatusOK {
		t.Errorf("the reservation after the bad requests: %d %s", r.status, r.raw)
	}
	// Wrong content type.
	req, _ := http.NewRequest("POST", s.url+"/v1/trust/check", bytes.NewReader([]byte(`{"tool":"write"}`)))
	req.Header.Set("Authorization", "Bearer "+aliceToken)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain body: %d, want 415", resp.StatusCode)
	}
	s.verify()
}
