package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// An admin raises an agent's level: the change is recorded with the
// admin's id and reason, and the agent's next check is allowed.
func TestAdminAssignsAndRevokes(t *testing.T) {
	s := newTestServer(t, limits{})
	deploy := map[string]any{"tool": "deploy"}
	if r := s.do("POST", "/v1/trust/check", aliceToken, deploy); r.body["allowed"] != false {
		t.Fatalf("alice may deploy before the change: %s", r.raw)
	}
	r := s.do("POST", "/v1/trust/assignments", adminToken,
		map[string]any{"agent": "alice", "level": "privileged", "reason": "on call this week"})
	if r.status != http.StatusOK {
		t.Fatalf("assign: %d %s", r.status, r.raw)
	}
	seq, ok := r.decisionID()
	rec, _ := r.body["record"].(map[string]any)
	attrs, _ := rec["attrs"].(map[string]any)
	if !ok || rec["event"] != "trust.assign" || rec["agent"] != "alice" || rec["assigned_level"] != "privileged" ||
		rec["reason"] != "on call this week" || attrs["operator"] != "root" || attrs["previous"] != "verified" {
		t.Errorf("assign answer: %s", r.raw)
	}
	stored, err := s.stack.Audit.Query(t.Context(), audit.Filter{Event: "trust.assign", Agent: "alice", Limit: audit.MaxLimit})
	if err != nil || stored.Records[len(stored.Records)-1].Seq != seq {
		t.Errorf("the change's record is not at %d: %v %v", seq, stored.Records, err)
	}
	if r := s.do("POST", "/v1/trust/check", aliceToken, deploy); r.body["allowed"] != true {
		t.Errorf("alice may not deploy after the change: %s", r.raw)
	}

	list := s.do("GET", "/v1/trust/assignments?agent=alice", auditorToken, nil)
	if list.status != http.StatusOK || !strings.Contains(string(list.raw), `"level":"privileged"`) ||
		strings.Contains(string(list.raw), `"bob"`) {
		t.Errorf("an auditor's list of alice's assignments: %d %s", list.status, list.raw)
	}
	if own := s.do("GET", "/v1/trust/assignments", bobToken, nil); own.status != http.StatusOK ||
		strings.Contains(string(own.raw), "alice") || !strings.Contains(string(own.raw), `"bob"`) {
		t.Errorf("bob's own list: %d %s", own.status, own.raw)
	}

	r = s.do("POST", "/v1/trust/revocations", adminToken, map[string]any{"agent": "alice", "reason": "rotation ended"})
	if r.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.status, r.raw)
	}
	if r := s.do("POST", "/v1/trust/check", aliceToken, map[string]any{"tool": "read"}); r.body["allowed"] != false {
		t.Errorf("alice may read with no level: %s", r.raw)
	}
	if r := s.do("POST", "/v1/trust/revocations", adminToken, map[string]any{"agent": "alice", "reason": "again"}); r.status != http.StatusNotFound {
		t.Errorf("revoking again: %d %s, want 404", r.status, r.raw)
	}
}

// Nobody but an admin changes a level, and bad changes are refused:
// nothing is recorded, nothing changes.
func TestTrustChangesRefused(t *testing.T) {
	s := newTestServer(t, limits{})
	ok := map[string]any{"agent": "bob", "level": "privileged", "reason": "x"}
	past := time.Now().Add(-time.Hour).Format(time.RFC3339)
	tests := []struct {
		name, token string
		body        any
		header      []string
		status      int
		detail      string
	}{
		{"no token", "", ok, nil, http.StatusUnauthorized, ""},
		{"wrong token", "nope", ok, nil, http.StatusUnauthorized, ""},
		{"an agent, for itself", bobToken, ok, nil, http.StatusForbidden, "operator's"},
		{"an auditor", auditorToken, ok, nil, http.StatusForbidden, "auditor"},
		{"no reason", adminToken, map[string]any{"agent": "bob", "level": "privileged"}, nil, http.StatusBadRequest, "reason"},
		{"blank reason", adminToken, map[string]any{"agent": "bob", "level": "privileged", "reason": "  "}, nil, http.StatusBadRequest, "reason"},
		{"no agent", adminToken, map[string]any{"level": "privileged", "reason": "x"}, nil, http.StatusBadRequest, "agent"},
		{"no level", adminToken, map[string]any{"agent": "bob", "reason": "x"}, nil, http.StatusBadRequest, "public, verified, privileged"},
		{"unknown level", adminToken, map[string]any{"agent": "bob", "level": "root", "reason": "x"}, nil, http.StatusBadRequest, "unknown trust level"},
		{"expired", adminToken, map[string]any{"agent": "bob", "level": "privileged", "reason": "x", "expires": past}, nil, http.StatusBadRequest, "has passed"},
		{"control character", adminToken, map[string]any{"agent": "bob\x1b[2J", "level": "privileged", "reason": "x"}, nil, http.StatusBadRequest, "control character"},
		{"unknown field", adminToken, map[string]any{"agent": "bob", "level": "privileged", "reason": "x", "operator": "someone-else"}, nil, http.StatusBadRequest, "unknown field"},
		{"long reason", adminToken, map[string]any{"agent": "bob", "level": "privileged", "reason": strings.Repeat("x", 1025)}, nil, http.StatusBadRequest, "reason"},
		{"not JSON", adminToken, []byte("agent=bob&level=privileged"), nil, http.StatusBadRequest, "not valid JSON"},
		{"form", adminToken, []byte("agent=bob"), []string{"Content-Type", "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType, ""},
		{"oversize", adminToken, []byte(`{"agent":"bob","level":"privileged","reason":"` + strings.Repeat("x", 70<<10) + `"}`), nil, http.StatusRequestEntityTooLarge, ""},
	}
	before := s.stack.Audit.Size()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.do("POST", "/v1/trust/assignments", tt.token, tt.body, tt.header...)
			if r.status != tt.status || !strings.Contains(r.str("detail"), tt.detail) {
				t.Errorf("%d %s, want %d with %q", r.status, r.raw, tt.status, tt.detail)
			}
		})
	}
	if r := s.do("POST", "/v1/trust/revocations", auditorToken, map[string]any{"agent": "bob", "reason": "x"}); r.status != http.StatusForbidden {
		t.Errorf("an auditor revoking: %d %s", r.status, r.raw)
	}
	if r := s.do("POST", "/v1/trust/revocations", aliceToken, map[string]any{"agent": "bob", "reason": "x"}); r.status != http.StatusForbidden {
		t.Errorf("an agent revoking another's level: %d %s", r.status, r.raw)
	}
	if r := s.do("GET", "/v1/trust/assignments?agent=bob", aliceToken, nil); r.status != http.StatusForbidden {
		t.Errorf("an agent listing another's levels: %d %s", r.status, r.raw)
	}
	if after := s.stack.Audit.Size(); after != before {
		t.Errorf("refused changes appended %d records", after-before)
	}
	if r := s.do("POST", "/v1/trust/check", bobToken, map[string]any{"tool": "deploy"}); r.body["allowed"] != false {
		t.Errorf("bob may deploy after refused changes: %s", r.raw)
	}
}

// A change the log can't record is not made (fail closed), and a retry
// with the same Idempotency-Key, once the log is back, makes it once.
func TestTrustChangeFailsClosed(t *testing.T) {
	s := newTestServer(t, limits{})
	body := map[string]any{"agent": "bob", "level": "privileged", "reason": "deploy day"}
	s.audit.Fail.Store(true)
	r := s.do("POST", "/v1/trust/assignments", adminToken, body, "Idempotency-Key", "k1")
	if r.status != http.StatusServiceUnavailable || r.code() != "audit_unavailable" {
		t.Fatalf("assign with the log failing: %d %s", r.status, r.raw)
	}
	if r := s.do("POST", "/v1/trust/check", bobToken, map[string]any{"tool": "deploy"}); r.body["allowed"] != false {
		t.Errorf("an unrecorded change took effect: %s", r.raw)
	}
	s.audit.Fail.Store(false)
	first := s.do("POST", "/v1/trust/assignments", adminToken, body, "Idempotency-Key", "k2")
	again := s.do("POST", "/v1/trust/assignments", adminToken, body, "Idempotency-Key", "k2")
	id1, _ := first.decisionID()
	id2, _ := again.decisionID()
	if first.status != http.StatusOK || again.status != http.StatusOK || id1 != id2 || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retried change: %d %s / %d %s", first.status, first.raw, again.status, again.raw)
	}
	page, err := s.stack.Audit.Query(t.Context(), audit.Filter{Event: "trust.assign", Agent: "bob", Limit: audit.MaxLimit})
	if err != nil || len(page.Records) != 2 { // the configuration's, and this one
		t.Errorf("bob's trust.assign records: %d (%v), want 2", len(page.Records), err)
	}
}
