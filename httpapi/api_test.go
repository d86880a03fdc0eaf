package httpapi_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/trust"
)

// TestGuardExactUnderConcurrency: 200 calls at once on a session of 50
// give exactly 50 calls, 150 recorded denials, and a log of exactly the
// 200 decisions that verifies.
func TestGuardExactUnderConcurrency(t *testing.T) {
	s := newTestServer(t, limits{calls: 50})
	const n = 200
	var (
		wg               sync.WaitGroup
		mu               sync.Mutex
		allowed, refused int
		decisions        = map[uint64]bool{}
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "busy"})
			var id uint64
			switch begin.status {
			case http.StatusCreated:
				end := s.do("POST", "/v1/calls/"+begin.str("call_id")+"/end", aliceToken, map[string]any{"tokens": i})
				if end.status != http.StatusOK {
					t.Errorf("end: %d %s", end.status, end.raw)
					return
				}
				id, _ = end.decisionID()
				mu.Lock()
				allowed++
			case http.StatusTooManyRequests:
				if begin.code() != "budget_exceeded" {
					t.Errorf("refusal code %q", begin.code())
				}
				var ok bool
				if id, ok = begin.decisionID(); !ok {
					t.Errorf("refusal without a decision id: %s", begin.raw)
				}
				mu.Lock()
				refused++
			default:
				t.Errorf("begin: %d %s", begin.status, begin.raw)
				return
			}
			if decisions[id] {
				t.Errorf("decision id %d given twice", id)
			}
			decisions[id] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if allowed != 50 || refused != 150 {
		t.Fatalf("allowed %d, refused %d; want 50 and 150", allowed, refused)
	}
	recs := s.records(audit.Filter{Event: "tool.call", Session: "alice/busy"})
	if len(recs) != n {
		t.Fatalf("the log holds %d tool.call records of the session, want %d", len(recs), n)
	}
	var allows int
	for _, r := range recs {
		if !decisions[r.Seq] {
			t.Errorf("record %d answered with no decision id", r.Seq)
		}
		if r.Outcome == audit.OutcomeAllowed {
			allows++
		}
	}
	if allows != 50 {
		t.Errorf("%d allow records, want 50", allows)
	}
	s.verify()
}

// TestReservationLifecycle: a reservation takes a slot; commit counts its
// tokens; release gives the slot back; one left open expires as spent and
// is recorded so; settled ones can't be settled again.
func TestReservationLifecycle(t *testing.T) {
	s := newTestServer(t, limits{calls: 3})
	used := func() (calls, tokens float64) {
		r := s.do("GET", "/v1/budget/sessions/s", aliceToken, nil)
		u := r.body["used"].(map[string]any)
		return u["calls"].(float64), u["tokens"].(float64)
	}
	r1 := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil)
	if r1.status != http.StatusCreated || r1.str("reservation_id") == "" {
		t.Fatalf("reserve: %d %s", r1.status, r1.raw)
	}
	if c := s.do("POST", "/v1/budget/reservations/"+r1.str("reservation_id")+"/commit", aliceToken, map[string]any{"tokens": 40}); c.status != http.StatusOK {
		t.Fatalf("commit: %d %s", c.status, c.raw)
	}
	if calls, tokens := used(); calls != 1 || tokens != 40 {
		t.Fatalf("after commit used %v calls, %v tokens; want 1, 40", calls, tokens)
	}
	again := s.do("POST", "/v1/budget/reservations/"+r1.str("reservation_id")+"/commit", aliceToken, map[string]any{"tokens": 40})
	if again.status != http.StatusConflict || again.code() != "conflict" {
		t.Errorf("second commit: %d %s, want 409 conflict", again.status, again.raw)
	}

	r2 := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil)
	if rel := s.do("POST", "/v1/budget/reservations/"+r2.str("reservation_id")+"/release", aliceToken, nil); rel.status != http.StatusOK {
		t.Fatalf("release: %d %s", rel.status, rel.raw)
	}
	if calls, _ := used(); calls != 1 {
		t.Fatalf("after release used %v calls, want the slot back (1)", calls)
	}

	r3 := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, map[string]any{"ttl_seconds": 1})
	if r3.status != http.StatusCreated {
		t.Fatalf("reserve: %d %s", r3.status, r3.raw)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.records(audit.Filter{Event: "budget.expire"})) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no budget.expire record 5s after a reservation of 1s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if calls, _ := used(); calls != 2 {
		t.Errorf("after expiry used %v calls, want 2: an expired reservation is spent", calls)
	}
	late := s.do("POST", "/v1/budget/reservations/"+r3.str("reservation_id")+"/commit", aliceToken, map[string]any{"tokens": 1})
	if late.status != http.StatusConflict {
		t.Errorf("commit after expiry: %d %s, want 409", late.status, late.raw)
	}
	exp := s.records(audit.Filter{Event: "budget.expire"})[0]
	if exp.Agent != "alice" || exp.Session != "alice/s" || exp.Attrs["reservation"] != r3.str("reservation_id") {
		t.Errorf("expiry record %+v", exp)
	}
	s.verify()
}

// TestCallExpiresAsSpent: a call begun and never ended is recorded as
// spent, once, when its time is up.
func TestCallExpiresAsSpent(t *testing.T) {
	s := newTestServer(t, limits{calls: 5})
	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s", "ttl_seconds": 1})
	if b.status != http.StatusCreated {
		t.Fatalf("begin: %d %s", b.status, b.raw)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := s.records(audit.Filter{Event: "tool.call"})
		if len(recs) == 1 {
			if recs[0].Outcome != audit.OutcomeAllowed || recs[0].Tokens != 0 {
				t.Errorf("expired call recorded as %+v", recs[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no record 5s after a call of 1s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	end := s.do("POST", "/v1/calls/"+b.str("call_id")+"/end", aliceToken, map[string]any{"tokens": 5})
	if end.status != http.StatusConflict {
		t.Errorf("end after expiry: %d %s, want 409", end.status, end.raw)
	}
	if u := s.do("GET", "/v1/budget/sessions/s", aliceToken, nil); u.body["used"].(map[string]any)["calls"].(float64) != 1 {
		t.Errorf("an expired call's slot was given back: %s", u.raw)
	}
}

// TestEndOutcomes: an error that ran is spent; one that never ran gives
// the slot back; a result over call_tokens is withheld, recorded as a
// denial.
func TestEndOutcomes(t *testing.T) {
	s := newTestServer(t, limits{calls: 10, callTokens: 100})
	calls := func() float64 {
		return s.do("GET", "/v1/budget/sessions/s", aliceToken, nil).body["used"].(map[string]any)["calls"].(float64)
	}
	begin := func() string {
		b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"})
		if b.status != http.StatusCreated {
			t.Fatalf("begin: %d %s", b.status, b.raw)
		}
		return b.str("call_id")
	}
	if e := s.do("POST", "/v1/calls/"+begin()+"/end", aliceToken, map[string]any{"error": "disk full", "tokens": 3}); e.status != http.StatusOK || e.str("reason") != "disk full" {
		t.Errorf("end with an error that ran: %d %s", e.status, e.raw)
	}
	if calls() != 1 {
		t.Errorf("a failed call that ran gave its slot back")
	}
	// An end's answer says how the session stands after it.
	used := func(r reply) map[string]any { u, _ := r.body["used"].(map[string]any); return u }
	if e := s.do("POST", "/v1/calls/"+begin()+"/end", aliceToken, map[string]any{"tokens": 4}); used(e)["calls"] != 2.0 || used(e)["tokens"] != 7.0 {
		t.Errorf("end's used: %s, want 2 calls and 7 tokens", e.raw)
	}
	if e := s.do("POST", "/v1/calls/"+begin()+"/end", aliceToken, map[string]any{"error": "no such file", "ran": false}); e.status != http.StatusOK || used(e)["calls"] != 2.0 {
		t.Errorf("end with an error that never ran: %d %s, want 200 and the slot back (2 calls)", e.status, e.raw)
	}
	if calls() != 2 {
		t.Errorf("a call that never ran kept its slot")
	}
	e := s.do("POST", "/v1/calls/"+begin()+"/end", aliceToken, map[string]any{"tokens": 101})
	if _, ok := e.decisionID(); e.status != http.StatusTooManyRequests || e.code() != "budget_exceeded" || !ok {
		t.Errorf("end over call_tokens: %d %s, want 429 budget_exceeded with a decision id", e.status, e.raw)
	}
	if r := s.do("POST", "/v1/calls/c_none/end", aliceToken, map[string]any{"tokens": 1, "ran": true}); r.status != http.StatusBadRequest {
		t.Errorf("ran without error: %d %s, want 400", r.status, r.raw)
	}
}

// TestIdempotencyKeys: a retried reserve with the same key takes one slot
// and answers the same reservation; the key with another body is a
// conflict; concurrent retries still take one slot.
func TestIdempotencyKeys(t *testing.T) {
	s := newTestServer(t, limits{calls: 100})
	first := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, map[string]any{"ttl_seconds": 60}, "Idempotency-Key", "k1")
	second := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, map[string]any{"ttl_seconds": 60}, "Idempotency-Key", "k1")
	if first.str("reservation_id") == "" || first.str("reservation_id") != second.str("reservation_id") || second.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry answered %s, first %s", second.raw, first.raw)
	}
	other := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, map[string]any{"ttl_seconds": 61}, "Idempotency-Key", "k1")
	if other.status != http.StatusUnprocessableEntity || other.code() != "conflict" {
		t.Errorf("same key, other body: %d %s, want 422 conflict", other.status, other.raw)
	}
	// Another agent's identical key is its own.
	bob := s.do("POST", "/v1/budget/sessions/s/reservations", bobToken, map[string]any{"ttl_seconds": 60}, "Idempotency-Key", "k1")
	if bob.status != http.StatusCreated || bob.str("reservation_id") == first.str("reservation_id") {
		t.Errorf("bob's request with alice's key: %d %s", bob.status, bob.raw)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := s.do("POST", "/v1/budget/sessions/t/reservations", aliceToken, nil, "Idempotency-Key", "k2")
			if r.status != http.StatusCreated && r.status != http.StatusConflict {
				t.Errorf("concurrent retry: %d %s", r.status, r.raw)
			}
			if r.status == http.StatusConflict && r.header.Get("Retry-After") != "1" {
				t.Errorf("a retry while the first runs: 409 without Retry-After: %s", r.raw)
			}
		}()
	}
	wg.Wait()
	u := s.do("GET", "/v1/budget/sessions/t", aliceToken, nil)
	if c := u.body["used"].(map[string]any)["calls"].(float64); c != 1 {
		t.Errorf("20 retries of one reservation took %v slots", c)
	}
	if r := s.do("POST", "/v1/budget/sessions/t/reservations", aliceToken, nil, "Idempotency-Key", strings.Repeat("k", 256)); r.status != http.StatusBadRequest {
		t.Errorf("a key of 256 characters: %d", r.status)
	}
}

// TestFailsClosed: with the log failing, nothing is allowed unrecorded.
// A call begun before the failure was known ends refused (its result
// must not be used); after that, begin, reserve, spending and events are
// refused with audit_unavailable and take nothing.
func TestFailsClosed(t *testing.T) {
	s := newTestServer(t, limits{calls: 10})
	s.audit.Fail.Store(true)
	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"})
	if b.status != http.StatusCreated {
		t.Fatalf("begin before the failure is known: %d %s", b.status, b.raw)
	}
	if e := s.do("POST", "/v1/calls/"+b.str("call_id")+"/end", aliceToken, map[string]any{"tokens": 5}); e.status != http.StatusServiceUnavailable || e.code() != "audit_unavailable" {
		t.Errorf("end with a failing log: %d %s, want 503 audit_unavailable", e.status, e.raw)
	}
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/calls", map[string]any{"tool": "write", "session": "s"}},
		{"/v1/budget/sessions/s/reservations", nil},
		{"/v1/budget/sessions/s/spending", map[string]any{"tokens": 5}},
		{"/v1/audit/events", map[string]any{"event": "note"}},
	} {
		r := s.do("POST", c.path, aliceToken, c.body)
		if r.status != http.StatusServiceUnavailable || r.code() != "audit_unavailable" {
			t.Errorf("POST %s with a failed log: %d %s, want 503 audit_unavailable", c.path, r.status, r.raw)
		}
	}
	s.audit.Fail.Store(false)
	u := s.do("GET", "/v1/budget/sessions/s", aliceToken, nil)
	if c := u.body["used"].(map[string]any)["calls"].(float64); c != 1 {
		t.Errorf("used %v calls after the refusals, want 1 (the call that ran)", c)
	}
}

// TestOperators: an auditor reads everything and changes nothing; an
// admin's event is recorded with its id.
func TestOperators(t *testing.T) {
	s := newTestServer(t, limits{})
	s.do("POST", "/v1/audit/events", aliceToken, map[string]any{"event": "note", "session": "s"})
	q := s.do("GET", "/v1/audit/records?agent=alice", auditorToken, nil)
	if q.status != http.StatusOK || len(q.body["records"].([]any)) == 0 {
		t.Fatalf("auditor query: %d %s", q.status, q.raw)
	}
	if b := s.do("GET", "/v1/budget/sessions/s?agent=alice", auditorToken, nil); b.status != http.StatusOK {
		t.Errorf("auditor reading alice's budget: %d %s", b.status, b.raw)
	}
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/audit/events"}, {"POST", "/v1/calls"}, {"POST", "/v1/budget/sessions/s/reservations"},
		{"POST", "/v1/budget/sessions/s/spending"},
	} {
		if r := s.do(c.method, c.path, auditorToken, map[string]any{}); r.status != http.StatusForbidden || r.code() != "forbidden" {
			t.Errorf("auditor %s %s: %d %s, want 403 forbidden", c.method, c.path, r.status, r.raw)
		}
	}
	ev := s.do("POST", "/v1/audit/events", adminToken, map[string]any{"event": "maintenance", "reason": "disk swap"})
	id, ok := ev.decisionID()
	if ev.status != http.StatusCreated || !ok {
		t.Fatalf("admin event: %d %s", ev.status, ev.raw)
	}
	recs := s.records(audit.Filter{Event: "maintenance"})
	if len(recs) != 1 || recs[0].Seq != id || recs[0].Agent != "" || recs[0].Attrs["operator"] != "root" || recs[0].Attrs["source"] != "operator" {
		t.Errorf("admin's record %+v", recs)
	}
	if r := s.do("POST", "/v1/calls", adminToken, map[string]any{"tool": "write", "session": "s"}); r.status != http.StatusForbidden {
		t.Errorf("an admin calling a tool: %d %s", r.status, r.raw)
	}
	s.verify()
}

// TestProofAndCheckpoint: a decision id proves with the log's key.
func TestProofAndCheckpoint(t *testing.T) {
	s := newTestServer(t, limits{})
	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"})
	e := s.do("POST", "/v1/calls/"+b.str("call_id")+"/end", aliceToken, map[string]any{"tokens": 7})
	id, _ := e.decisionID()
	p := s.do("GET", fmt.Sprintf("/v1/audit/records/%d/proof", id), aliceToken, nil)
	if p.status != http.StatusOK {
		t.Fatalf("proof: %d %s", p.status, p.raw)
	}
	var proof audit.InclusionProof
	if err := proof.UnmarshalText([]byte(p.str("proof"))); err != nil {
		t.Fatal(err)
	}
	rec, cp, err := audit.CheckInclusion(&proof, s.stack.Audit.Verifier())
	if err != nil || rec.Tool != "write" || rec.Tokens != 7 || cp.Size <= id {
		t.Fatalf("CheckInclusion = %+v, %+v, %v", rec, cp, err)
	}
	c := s.do("GET", "/v1/audit/checkpoint", bobToken, nil)
	if c.status != http.StatusOK || c.body["size"].(float64) < float64(id+1) {
		t.Errorf("checkpoint: %d %s", c.status, c.raw)
	}
	if r := s.do("GET", fmt.Sprintf("/v1/audit/records/%d", id), aliceToken, nil); r.status != http.StatusOK || r.str("leaf_hash") == "" {
		t.Errorf("record: %d %s", r.status, r.raw)
	}
}

// TestCloseSettlesOpen: stopping the server records what is still open
// as spent.
func TestCloseSettlesOpen(t *testing.T) {
	s := newTestServer(t, limits{})
	s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"})
	s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil)
	if err := s.api.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(s.records(audit.Filter{Event: "tool.call"})); n != 1 {
		t.Errorf("%d tool.call records after Close, want 1", n)
	}
	if n := len(s.records(audit.Filter{Event: "budget.expire"})); n != 1 {
		t.Errorf("%d budget.expire records after Close, want 1", n)
	}
	if r := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"}); r.status != http.StatusServiceUnavailable {
		t.Errorf("begin after Close: %d %s", r.status, r.raw)
	}
}

// TestOpenBound: one agent holding MaxOpen reservations and calls is
// refused more (rate_limited, nothing recorded or reserved), others are
// not, and settling one frees a place.
func TestOpenBound(t *testing.T) {
	s := newTestServer(t, limits{})
	s.api.MaxOpen = 3
	var ids []string
	for range 2 {
		ids = append(ids, s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil).str("reservation_id"))
	}
	if b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"}); b.status != http.StatusCreated {
		t.Fatalf("third: %d %s", b.status, b.raw)
	}
	size := s.stack.Audit.Size()
	for _, path := range []string{"/v1/budget/sessions/s/reservations", "/v1/calls"} {
		r := s.do("POST", path, aliceToken, map[string]any{"tool": "write", "session": "s"})
		if path != "/v1/calls" {
			r = s.do("POST", path, aliceToken, nil)
		}
		if r.status != http.StatusTooManyRequests || r.code() != "rate_limited" {
			t.Errorf("POST %s past the bound: %d %s, want 429 rate_limited", path, r.status, r.raw)
		}
	}
	if s.stack.Audit.Size() != size {
		t.Errorf("refusals past the bound were recorded")
	}
	if u := s.do("GET", "/v1/budget/sessions/s", aliceToken, nil); u.body["used"].(map[string]any)["calls"].(float64) != 3 {
		t.Errorf("refusals past the bound took slots: %s", u.raw)
	}
	if r := s.do("POST", "/v1/budget/sessions/s/reservations", bobToken, nil); r.status != http.StatusCreated {
		t.Errorf("bob is held to alice's bound: %d %s", r.status, r.raw)
	}
	s.do("POST", "/v1/budget/reservations/"+ids[0]+"/release", aliceToken, nil)
	if r := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil); r.status != http.StatusCreated {
		t.Errorf("after settling one: %d %s", r.status, r.raw)
	}
}

// TestRetryRecordsOnce: a spending or commit counted but not recorded (the
// log failed) answers 503; its retry with the same Idempotency-Key
// records it once the log recovers, without counting it again.
func TestRetryRecordsOnce(t *testing.T) {
	s := newTestServer(t, limits{calls: 10})
	res := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil).str("reservation_id")
	for _, c := range []struct{ name, path, event string }{
		{"spending", "/v1/budget/sessions/s/spending", "budget.spend"},
		{"commit", "/v1/budget/reservations/" + res + "/commit", "budget.commit"},
	} {
		s.audit.Fail.Store(true)
		first := s.do("POST", c.path, aliceToken, map[string]any{"tokens": 100}, "Idempotency-Key", c.name)
		if first.status != http.StatusServiceUnavailable || first.code() != "audit_unavailable" {
			t.Fatalf("%s with a failing log: %d %s", c.name, first.status, first.raw)
		}
		// While the log is still failing the retry still answers 503.
		if again := s.do("POST", c.path, aliceToken, map[string]any{"tokens": 100}, "Idempotency-Key", c.name); again.status != http.StatusServiceUnavailable {
			t.Fatalf("%s retried while the log fails: %d %s", c.name, again.status, again.raw)
		}
		s.audit.Fail.Store(false)
		retry := s.do("POST", c.path, aliceToken, map[string]any{"tokens": 100}, "Idempotency-Key", c.name)
		id, ok := retry.decisionID()
		if retry.status != http.StatusOK || !ok {
			t.Fatalf("%s retried after the log recovered: %d %s", c.name, retry.status, retry.raw)
		}
		recs := s.records(audit.Filter{Event: c.event})
		if len(recs) != 1 || recs[0].Seq != id || recs[0].Tokens != 100 {
			t.Errorf("%s: records %+v, want one of 100 tokens with the answer's id %d", c.name, recs, id)
		}
		if replay := s.do("POST", c.path, aliceToken, map[string]any{"tokens": 100}, "Idempotency-Key", c.name); replay.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("%s: a retry after success is not a replay: %s", c.name, replay.raw)
		}
	}
	u := s.do("GET", "/v1/budget/sessions/s", aliceToken, nil).body["used"].(map[string]any)
	if u["calls"].(float64) != 2 || u["tokens"].(float64) != 200 {
		t.Errorf("used %v: want 2 calls (the reservation and the spending) and 200 tokens, each counted once", u)
	}
}

// TestIdempotencyKeyScope: a key is the caller's for one route and query;
// answers that say "later" are not remembered.
func TestIdempotencyKeyScope(t *testing.T) {
	s := newTestServer(t, limits{})
	s.api.MaxOpen = 1
	first := s.do("POST", "/v1/budget/sessions/a/reservations", aliceToken, nil, "Idempotency-Key", "k")
	other := s.do("POST", "/v1/budget/sessions/b/reservations", aliceToken, nil, "Idempotency-Key", "k")
	if other.header.Get("Idempotent-Replayed") == "true" || other.code() != "rate_limited" {
		t.Fatalf("the same key on another path: %d %s", other.status, other.raw)
	}
	s.do("POST", "/v1/budget/reservations/"+first.str("reservation_id")+"/release", aliceToken, nil)
	if again := s.do("POST", "/v1/budget/sessions/b/reservations", aliceToken, nil, "Idempotency-Key", "k"); again.status != http.StatusCreated {
		t.Errorf("a rate_limited answer was remembered: the retry after a place freed got %d %s", again.status, again.raw)
	}
}

// TestIdempotencyKeyOfOneAuthority: an agent's tokens of different scopes
// share the agent's Idempotency-Keys, but one can't use a key the other
// did — carol's public-scope token, sending the key her staging token
// began "deploy" under, is refused (422), neither told the staging
// token's 201 nor running the request again — while two tokens of the
// same scopes (a rotation) replay each other's answers. A spending sent
// through both is counted once.
func TestIdempotencyKeyOfOneAuthority(t *testing.T) {
	s := newTestServer(t, limits{})
	const plainCarol, rotatedCarol = "carol-plain-token", "carol-staging-token-2"
	s.api.SetCredentials([]httpapi.Credential{
		{TokenSHA256: sha256.Sum256([]byte(scopedToken)), Agent: "carol", Scopes: []string{"staging"}},
		{TokenSHA256: sha256.Sum256([]byte(rotatedCarol)), Agent: "carol", Scopes: []string{"staging"}},
		{TokenSHA256: sha256.Sum256([]byte(plainCarol)), Agent: "carol", Scopes: []string{""}},
	}, nil)
	body := map[string]any{"tool": "deploy", "session": "s1"}
	began := s.do("POST", "/v1/calls", scopedToken, body, "Idempotency-Key", "deploy-s1")
	if began.status != http.StatusCreated {
		t.Fatalf("staging token: %d %s", began.status, began.raw)
	}
	if r := s.do("POST", "/v1/calls", plainCarol, body, "Idempotency-Key", "deploy-s1"); r.status != http.StatusUnprocessableEntity || r.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the public-scope token with the staging token's key: %d (replayed %q) %s, want 422",
			r.status, r.header.Get("Idempotent-Replayed"), r.raw)
	}
	r := s.do("POST", "/v1/calls", rotatedCarol, body, "Idempotency-Key", "deploy-s1")
	if r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "true" || r.str("call_id") != began.str("call_id") {
		t.Errorf("a token of the same scopes with the key: %d (replayed %q) %s, want the first answer",
			r.status, r.header.Get("Idempotent-Replayed"), r.raw)
	}
	spend := map[string]any{"tokens": 7}
	for _, token := range []string{scopedToken, plainCarol} {
		s.do("POST", "/v1/budget/sessions/s2/spending", token, spend, "Idempotency-Key", "spend-1")
	}
	if u := s.do("GET", "/v1/budget/sessions/s2", scopedToken, nil); u.status != http.StatusOK || !strings.Contains(string(u.raw), `"used":{"tokens":7,"calls":1}`) {
		t.Errorf("a spending sent with one key through two tokens: %d %s, want it counted once", u.status, u.raw)
	}
	// A spending counted but not recorded is recorded by the retry,
	// whichever token sends it.
	s.audit.Fail.Store(true)
	if r := s.do("POST", "/v1/budget/sessions/s3/spending", scopedToken, spend, "Idempotency-Key", "spend-2"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("a spending with the log failing: %d %s", r.status, r.raw)
	}
	s.audit.Fail.Store(false)
	if r := s.do("POST", "/v1/budget/sessions/s3/spending", plainCarol, spend, "Idempotency-Key", "spend-2"); r.status != http.StatusOK {
		t.Errorf("its retry through the other token: %d %s, want the record written", r.status, r.raw)
	}
	if recs := s.records(audit.Filter{Event: "budget.spend", Session: "carol/s3"}); len(recs) != 1 {
		t.Errorf("%d records of the spending, want 1", len(recs))
	}
}

// TestProofsOnDemand: a caller that asks for proofs and goes away at any
// moment can't mark the log failed for everyone, and asking can't make
// the log sign checkpoints faster than one a second.
func TestProofsOnDemand(t *testing.T) {
	s := newTestServer(t, limits{durable: true})
	for i := range 100 {
		ev := s.do("POST", "/v1/audit/events", aliceToken, map[string]any{"event": "note"})
		seq, _ := ev.decisionID()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%50)*20*time.Microsecond)
		req := httptest.NewRequest("GET", fmt.Sprintf("/v1/audit/records/%d/proof", seq), nil).WithContext(ctx)
		req.Header.Set("Authorization", "Bearer "+aliceToken)
		s.api.ServeHTTP(httptest.NewRecorder(), req)
		cancel()
		if err := s.stack.Audit.Err(); err != nil {
			t.Fatalf("after a proof request cancelled at %v, the log is failed: %v", time.Duration(i%50)*20*time.Microsecond, err)
		}
	}
	if b := s.do("POST", "/v1/calls", bobToken, map[string]any{"tool": "write", "session": "s"}); b.status != http.StatusCreated {
		t.Fatalf("bob's begin after alice's cancelled proofs: %d %s", b.status, b.raw)
	}
	// Two proofs of new records back to back: the second waits for the
	// signing gap, a second after the first's signing, which came after
	// start.
	start := time.Now()
	for range 2 {
		ev := s.do("POST", "/v1/audit/events", aliceToken, map[string]any{"event": "note"})
		seq, _ := ev.decisionID()
		if p := s.do("GET", fmt.Sprintf("/v1/audit/records/%d/proof", seq), aliceToken, nil); p.status != http.StatusOK {
			t.Fatalf("proof: %d %s", p.status, p.raw)
		}
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("two proofs of new records, each needing a checkpoint, took %v: both were signed at once", took)
	}
}

// TestEndRetriedAfterAuditFailure: an end whose record could not be
// written answers audit_unavailable, and so does its retry with the same
// key — never "ended already", which a client could take for success.
func TestEndRetriedAfterAuditFailure(t *testing.T) {
	s := newTestServer(t, limits{})
	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "write", "session": "s"})
	s.audit.Fail.Store(true)
	path := "/v1/calls/" + b.str("call_id") + "/end"
	for i, fail := range []bool{true, true, false} {
		s.audit.Fail.Store(fail)
		r := s.do("POST", path, aliceToken, map[string]any{"tokens": 3}, "Idempotency-Key", "end-1")
		if r.status != http.StatusServiceUnavailable || r.code() != "audit_unavailable" {
			t.Errorf("attempt %d (log failing %v): %d %s, want 503 audit_unavailable", i+1, fail, r.status, r.raw)
		}
	}
	if r := s.do("POST", path, aliceToken, map[string]any{"tokens": 3}); r.status != http.StatusConflict || !strings.Contains(r.str("detail"), "must not be used") {
		t.Errorf("an end without a key after the failure: %d %s", r.status, r.raw)
	}
}

// failingCounts is a budget store whose token counts fail while fail is
// set, as a PostgreSQL store's do on a timeout.
type failingCounts struct {
	budget.Store
	fail atomic.Bool
}

func (b *failingCounts) CommitWithin(ctx context.Context, session string, tokens int64) (budget.State, error) {
	if b.fail.Load() {
		return budget.State{}, errors.New("connection reset")
	}
	return b.Store.CommitWithin(ctx, session, tokens)
}

func (b *failingCounts) Commit(ctx context.Context, session string, tokens int64) error {
	if b.fail.Load() {
		return errors.New("connection reset")
	}
	return b.Store.Commit(ctx, session, tokens)
}

// TestEndRetriedAfterBudgetFailure: an end whose tokens could not be
// counted answers budget_unavailable — the result is withheld — and so
// does its retry with the same key once the store is back, never "ended
// already"; the record says the result was withheld.
func TestEndRetriedAfterBudgetFailure(t *testing.T) {
	counts := &failingCounts{Store: budget.NewMemoryStore()}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate:      agentsec.TrustGateConfig{ToolName: "read", RequiredLevel: "public", Agents: []trust.Assignment{{Agent: "alice", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 10, Store: counts},
		AuditNamespace: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	api := &httpapi.Server{Stack: stack, Agents: []httpapi.Credential{{TokenSHA256: sha256.Sum256([]byte(aliceToken)), Agent: "alice", Scopes: []string{""}}}}
	srv := httptest.NewServer(api)
	t.Cleanup(func() { srv.Close(); api.Close(); stack.Close() })
	s := &testServer{t: t, url: srv.URL, stack: stack, api: api, http: srv.Client()}

	b := s.do("POST", "/v1/calls", aliceToken, map[string]any{"tool": "read", "session": "s"})
	path := "/v1/calls/" + b.str("call_id") + "/end"
	for i, fail := range []bool{true, false} {
		counts.fail.Store(fail)
		r := s.do("POST", path, aliceToken, map[string]any{"tokens": 5}, "Idempotency-Key", "end-1")
		if r.status != http.StatusServiceUnavailable || r.code() != "budget_unavailable" {
			t.Errorf("attempt %d (counts failing %v): %d %s, want 503 budget_unavailable", i+1, fail, r.status, r.raw)
		}

	}
	recs := s.records(audit.Filter{Event: "tool.call"})
	if len(recs) != 1 || recs[0].Outcome != audit.OutcomeDenied || recs[0].Attrs["withheld_tokens"] != "5" {
		t.Errorf("records %+v, want one denial with the result withheld", recs)
	}
	// A reservation's commit that fails the same way says what failed,
	// not the store's own error.
	res := s.do("POST", "/v1/budget/sessions/s/reservations", aliceToken, nil)
	counts.fail.Store(true)
	r := s.do("POST", "/v1/budget/reservations/"+res.str("reservation_id")+"/commit", aliceToken, map[string]any{"tokens": 5})
	if r.status != http.StatusServiceUnavailable || r.code() != "budget_unavailable" || strings.Contains(string(r.raw), "connection reset") {
		t.Errorf("a commit with the store failing: %d %s, want 503 budget_unavailable without the store's error", r.status, r.raw)
	}
}
