package adversarial

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/mcpgate"
)

// Issue 11, point 8: one token could open every session the gateway
// allows, each with its own upstream connections, and lock the other
// agents out. An agent's sessions are capped; the others are still
// served.
func TestSessionFloodByOneAgent(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	f := h.http(func(g *mcpgate.Gateway) { g.MaxSessions = 40 })
	opened, refused := 0, 0
	for range 30 {
		_, status := f.open(agentToken)
		switch status {
		case http.StatusOK:
			opened++
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("initialize answered %d", status)
		}
	}
	if opened != 10 || refused != 20 {
		t.Errorf("one agent opened %d sessions and was refused %d, want 10 (a quarter of 40) and 20", opened, refused)
	}
	session, status := f.open(otherToken)
	if status != http.StatusOK {
		t.Fatalf("another agent, after the flood: %d", status)
	}
	if _, m := f.callTool(otherToken, session, 2, "fs.read", ""); !strings.Contains(string(m.Result), "done: fs.read") {
		t.Errorf("another agent's call after the flood: %s", m.Result)
	}
}

// Point 8: the budgets of ended sessions are forgotten, so a gateway that
// serves session after session doesn't grow without bound.
func TestEndedSessionsBudgetsForgotten(t *testing.T) {
	up := newNaiveServer(t)
	store := budget.NewMemoryStore()
	h := newHarness(t, up, limits{budgetStore: store})
	f := h.http()
	for i := range 20 {
		session, _ := f.open(agentToken)
		if _, m := f.callTool(agentToken, session, 2, "fs.read", ""); !strings.Contains(string(m.Result), "done") {
			t.Fatalf("call %d: %s", i, m.Result)
		}
		f.delete(agentToken, session)
	}
	deadline := time.Now().Add(5 * time.Second)
	for store.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := store.Len(); n != 0 {
		t.Errorf("%d budgets kept after their 20 sessions ended", n)
	}
	// What the audit needs is kept: every call is in the log.
	if n := executedRecords(h.records()); n != 20 {
		t.Errorf("%d calls in the log, want 20", n)
	}
	h.checkInvariants()
}

// Issue 11, point 16: a session's end reaches an HTTP upstream as one
// DELETE.
func TestSessionEndDeletesUpstreamOnce(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	f := h.http()
	for range 3 {
		session, _ := f.open(agentToken)
		f.callTool(agentToken, session, 2, "fs.read", "")
		f.delete(agentToken, session)
	}
	time.Sleep(500 * time.Millisecond) // a second DELETE would come from the upstream's reader
	up.mu.Lock()
	deletes := up.deletes
	up.mu.Unlock()
	if deletes != 3 {
		t.Errorf("3 sessions ended with %d DELETEs to the upstream, want 3", deletes)
	}
}

// Issue 11, point 11: the Bearer scheme is case-insensitive.
func TestBearerSchemeAnyCase(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	f := h.http()
	for _, scheme := range []string{"bearer", "BEARER", "Bearer", "bEaReR"} {
		req, _ := http.NewRequest(http.MethodPost, f.url, strings.NewReader(initializeBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", scheme+" "+agentToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%q scheme: %d, want 200", scheme, resp.StatusCode)
		}
	}
	for _, header := range []string{"Basic " + agentToken, "Bearer", "Bearer ", agentToken, "Bearerx " + agentToken} {
		req, _ := http.NewRequest(http.MethodPost, f.url, strings.NewReader(initializeBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", header, resp.StatusCode)
		}
	}
}

// Issue 11, point 12: a batch over HTTP is refused in HTTP's words.
func TestBatchOverHTTP(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	f := h.http()
	session, _ := f.open(agentToken)
	status, body, _ := f.post(agentToken, session, "["+toolCall(1, "fs.read", "")+","+toolCall(2, "fs.write", "")+"]")
	if status != http.StatusBadRequest || !strings.Contains(string(body), "POST one message per request") || strings.Contains(string(body), "line") {
		t.Errorf("a batch: %d %s", status, body)
	}
	if n := up.executions(); n != 0 {
		t.Errorf("the upstream ran %d calls of a batch", n)
	}
}

const initializeBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}`

// delete ends a session.
func (f *httpFront) delete(token, session string) {
	f.h.t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, f.url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Mcp-Session-Id", session)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.h.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		f.h.t.Fatalf("DELETE: %d", resp.StatusCode)
	}
}

// A session holds at most 1,024 requests in progress: a flood of calls
// past that is refused at once, and the session goes on.
func TestInflightFlood(t *testing.T) {
	// The calls run until the refusals are counted: a call that ended
	// would free its place for one of the flood.
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	up := newNaiveServer(t, func(s *naiveServer) { s.hold = hold })
	h := newHarness(t, up, limits{calls: 5000})
	c := h.stdio()
	t.Cleanup(release) // before the harness's own, which wait for the calls
	const calls = 1100
	var lines strings.Builder
	for i := range calls {
		lines.WriteString(toolCall(1000+i, "slow", "") + "\n")
	}
	c.send(strings.TrimSuffix(lines.String(), "\n"))
	refused := 0
	// Alone this takes a few seconds; beside the other packages' tests,
	// with the race detector, it once took 21.
	for deadline := time.After(time.Minute); refused < calls-1024; {
		select {
		case m := <-c.other:
			if m.Error != nil && strings.Contains(m.Error.Message, "requests in progress") {
				refused++
			}
		case <-deadline:
			t.Fatalf("%d calls refused past the in-flight bound, want %d", refused, calls-1024)
		}
	}
	if n := up.running.Load(); n > 1024 {
		t.Errorf("%d calls ran at once upstream, more than a session may have in progress", n)
	}
	release()
	// Every call taken reaches the server once, some only after the
	// release: the invariants are checked once all have.
	for deadline := time.Now().Add(30 * time.Second); up.executions() < calls-refused; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server ran %d of the %d calls taken", up.executions(), calls-refused)
		}
	}
	h.waitRecords(calls - refused)
	h.checkInvariants()
}
