package adversarial

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
)

// waitRunning waits until the upstream runs at least n calls at once.
func waitRunning(t *testing.T, up *naiveServer, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for up.running.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream never ran %d calls at once", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Issue 11, point 1: a client that cancels each call once the gateway
// has sent it gets no slot back — the upstream ran it. Over stdio, one
// call at a time, each cancelled while it runs.
func TestCancelAfterSendIsSpentStdio(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{calls: 5})
	c := h.stdio()
	denied := 0
	for i := range 12 {
		id := 100 + i
		ch := c.expect(fmt.Sprint(id))
		c.send(toolCall(id, "slow", ""))
		// Either it is refused before it runs (over budget), or it runs.
		var answered *rpcMessage
		for deadline := time.Now().Add(10 * time.Second); answered == nil && up.running.Load() == 0; time.Sleep(time.Millisecond) {
			select {
			case m := <-ch:
				answered = &m
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("call %d neither answered nor ran", i)
			}
		}
		if answered != nil {
			if text, isErr := resultText(*answered); !isErr || !strings.Contains(text, "call limit reached") {
				t.Fatalf("call %d answered %s %v, want a call-limit denial", i, text, answered.Error)
			}
			denied++
			continue
		}
		c.send(fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%d,"reason":"changed my mind"}}`, id))
		for up.running.Load() > 0 { // let it finish at the server
			time.Sleep(5 * time.Millisecond)
		}
	}
	if ex := up.executions(); ex > 5 {
		t.Errorf("the upstream executed %d calls for a session limited to 5", ex)
	}
	if denied < 7 {
		t.Errorf("%d of 12 calls denied, want at least 7", denied)
	}
	r := c.call(toolCall(200, "fs.read", ""), "200")
	if text, isErr := resultText(r); !isErr || !strings.Contains(text, "call limit reached") {
		t.Errorf("a 13th call answered %q, want a call-limit denial", text)
	}
	h.waitRecords(up.executions())
	var cancelled int
	for _, rec := range h.records() {
		if strings.Contains(rec.Reason, "cancelled by the client") {
			cancelled++
			if rec.Outcome != audit.OutcomeAllowed || rec.Tokens == 0 {
				t.Errorf("a cancelled call is recorded as %s with %d tokens (%q), want allowed with its late result's tokens", rec.Outcome, rec.Tokens, rec.Reason)
			}
		}
	}
	if cancelled == 0 {
		t.Error("no record says a call was cancelled by the client")
	}
	h.checkInvariants()
}

// waitRecords waits until the log holds n executed calls: a call the
// client cancelled is recorded once its late answer comes.
func (h *harness) waitRecords(n int) {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for executedRecords(h.records()) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// The same over HTTP, with every call sent at once and each cancelled
// while it runs: a cancel storm.
func TestCancelStormHTTP(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.slow = 500 * time.Millisecond })
	h := newHarness(t, up, limits{calls: 5})
	f := h.http()
	session, status := f.open(agentToken)
	if status != http.StatusOK {
		t.Fatalf("initialize: %d", status)
	}
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			f.callTool(agentToken, session, 100+i, "slow", "")
		})
	}
	waitRunning(t, up, 1)
	for round := 0; round < 3; round++ {
		for i := range 12 {
			f.post(agentToken, session, fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%d}}`, 100+i))
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if ex := up.executions(); ex > 5 {
		t.Errorf("the upstream executed %d calls for a session limited to 5", ex)
	}
	// The slots are spent: nothing more runs in this session.
	if _, m := f.callTool(agentToken, session, 300, "fs.read", ""); !strings.Contains(string(m.Result), "call limit reached") {
		t.Errorf("a call after the storm answered %s, want a call-limit denial", m.Result)
	}
	// Another agent is still served.
	other, _ := f.open(otherToken)
	if _, m := f.callTool(otherToken, other, 1, "fs.read", ""); !strings.Contains(string(m.Result), "done: fs.read") {
		t.Errorf("another agent's call answered %s", m.Result)
	}
	h.waitRecords(up.executions())
	h.checkInvariants()
}

// Issue 11, point 1: failures after the call was sent — a timeout, an
// error answer, an answer too big to carry — spend the slot too.
func TestFailuresAfterSendAreSpent(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.slow = 2 * time.Second })
	h := newHarness(t, up, limits{calls: 3, timeout: 300 * time.Millisecond})
	c := h.stdio()
	for i, tool := range []string{"slow", "fail", "fail"} {
		m := c.call(toolCall(10+i, tool, ""), fmt.Sprint(10+i))
		if m.Error == nil {
			if _, isErr := resultText(m); !isErr {
				t.Errorf("%s: answered %s, want a failure", tool, m.Result)
			}
		}
	}
	r := c.call(toolCall(20, "fs.read", ""), "20")
	if text, _ := resultText(r); !strings.Contains(text, "call limit reached") {
		t.Errorf("after three failed calls that ran, a fourth answered %q %v, want a call-limit denial", text, r.Error)
	}
	recs := h.records()
	var reasons []string
	for _, rec := range recs {
		if rec.Event == agentsec.EventToolCall && rec.Outcome == audit.OutcomeAllowed {
			reasons = append(reasons, rec.Reason)
		}
	}
	want := []string{"sent, then failed", "answered with an error", "answered with an error"}
	for i, w := range want {
		if i >= len(reasons) || !strings.Contains(reasons[i], w) {
			t.Errorf("record %d says %q, want it to say %q", i, reasons, w)
		}
	}
	h.checkInvariants()
}

// Issue 11, point 4: calls made at once can't take a session's tokens
// far past its limit: results are counted, and delivered, only while the
// session is under its limit, so it passes it by less than one result;
// with a per-call ceiling, by less than the ceiling.
func TestTokenOvershootIsBounded(t *testing.T) {
	for _, tt := range []struct {
		name       string
		callTokens int64
	}{{"no ceiling", 0}, {"ceiling", 150}} {
		t.Run(tt.name, func(t *testing.T) {
			up := newNaiveServer(t)
			h := newHarness(t, up, limits{tokens: 1000, callTokens: tt.callTokens})
			f := h.http()
			session, _ := f.open(agentToken)
			const calls = 64
			var wg sync.WaitGroup
			var mu sync.Mutex
			delivered := 0
			for i := range calls {
				wg.Go(func() {
					_, m := f.callTool(agentToken, session, 10+i, "big", `{"size":500}`)
					if text, isErr := resultText(m); !isErr && strings.HasPrefix(text, "word") {
						mu.Lock()
						delivered++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			st, err := h.stack.Budget.Usage(context.Background(), session)
			if err != nil {
				t.Fatal(err)
			}
			// One result is about 100 tokens.
			if bound := int64(999 + 150); st.Used.Tokens > bound {
				t.Errorf("tokens counted %d for a limit of 1000: more than %d", st.Used.Tokens, bound)
			}
			var counted int64
			for _, rec := range h.records() {
				counted += rec.Tokens
			}
			if counted != st.Used.Tokens {
				t.Errorf("the log counts %d tokens, the budget %d", counted, st.Used.Tokens)
			}
			if delivered == 0 || int64(delivered) > st.Used.Tokens/90+1 {
				t.Errorf("%d results delivered for %d tokens counted", delivered, st.Used.Tokens)
			}
			h.checkInvariants()
		})
	}
}

// A result over the per-call ceiling is withheld, and recorded as such.
func TestResultOverCeilingWithheld(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{callTokens: 50})
	c := h.stdio()
	m := c.call(toolCall(5, "big", `{"size":5000}`), "5")
	if text, isErr := resultText(m); !isErr || !strings.Contains(text, "result withheld") || strings.Contains(text, "word word") {
		t.Errorf("a result over the ceiling answered %.200q", text)
	}
	recs := h.records()
	last := recs[len(recs)-1]
	if last.Outcome != audit.OutcomeDenied || last.Attrs["withheld_tokens"] == "" {
		t.Errorf("its record: %+v", last)
	}
	h.checkInvariants()
}
