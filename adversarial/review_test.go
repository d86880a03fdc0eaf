package adversarial

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// A call and its cancel written at once: whichever the gateway sees
// first, a call that reached the upstream is spent. Over both of the
// gateway's paths to an upstream: answers on the caller's goroutine (an
// HTTP server's POST) and answers through Read (a stdio server's).
func TestCallAndCancelAtOnce(t *testing.T) {
	for _, viaRead := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaRead=%v", viaRead), func(t *testing.T) {
			up := newNaiveServer(t, func(s *naiveServer) { s.slow = 20 * time.Millisecond })
			h := newHarness(t, up, limits{calls: 3, viaRead: viaRead})
			c := h.stdio()
			for i := range 30 {
				id := 100 + i
				c.send(toolCall(id, "slow", "") + "\n" +
					fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%d}}`, id))
			}
			time.Sleep(200 * time.Millisecond)
			h.waitRecords(up.executions())
			if ex := up.executions(); ex > 3 {
				t.Errorf("the upstream executed %d calls for a session limited to 3", ex)
			}
			// checkInvariants: every execution is a spent call in the
			// log — a call whose slot came back never reached the server.
			h.checkInvariants()
		})
	}
}

// An upstream's error answer is what reaches the model, so it is under
// the budget's rules: over the per-call ceiling it is withheld.
func TestErrorAnswerOverCeilingWithheld(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{callTokens: 20})
	c := h.stdio()
	for i := range 3 {
		m := c.call(toolCall(10+i, "failbig", `{"size":50000}`), fmt.Sprint(10+i))
		if m.Error != nil && strings.Contains(m.Error.Message, "word word") {
			t.Fatalf("call %d: an error answer of 10,000 tokens was delivered past a ceiling of 20", i)
		}
		if text, isErr := resultText(m); !isErr || !strings.Contains(text, "result withheld") {
			t.Errorf("call %d answered %.100q %+v, want the answer withheld", i, text, m.Error)
		}
	}
	for _, rec := range h.records() {
		if rec.Tool == "failbig" && (rec.Outcome != audit.OutcomeDenied || rec.Attrs["withheld_tokens"] == "") {
			t.Errorf("record: %s %q %v", rec.Outcome, rec.Reason, rec.Attrs)
		}
	}
	h.checkInvariants()
}

// A task id spelled twice — as taskId, and as a key a loose server also
// reads — reaches the server as the one the gateway checked.
func TestTaskIDSmuggling(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.tasks = true })
	h := newHarness(t, up, limits{})
	victim := h.stdio()
	victim.call(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":5000},"task":{}}}`, "1")
	thief := h.stdio()
	thief.call(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fs.read","arguments":{},"task":{}}}`, "1")
	for i, method := range []string{"tasks/result", "tasks/get", "tasks/cancel"} {
		r := thief.call(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{"taskId":"task-2","TASKID":"task-1","TaskId":"task-1"}}`, 10+i, method), fmt.Sprint(10+i))
		if strings.Contains(string(r.Result), "task-1") || strings.Contains(string(r.Result), "word word") {
			t.Errorf("%s reached another session's task: %.200s", method, r.Result)
		}
	}
	// "Task" in another case is not a way past the task table either.
	r := thief.call(`{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"fs.read","arguments":{},"TASK":{}}}`, "20")
	if strings.Contains(string(r.Result), `"taskId"`) {
		t.Errorf("a task created through a key in another case: %s", r.Result)
	}
}

// A cancel's grace never outlasts the call's own deadline: a call
// cancelled just before its upstream's timeout ends at that timeout, not
// 5 seconds later.
func TestCancelGraceWithinDeadline(t *testing.T) {
	// A timeout of 1.5 s and a cancel at once: the call settles at about
	// 1.5 s with the deadline kept, past 5 s if the grace outlasted it
	// (the tool itself runs 6 s).
	up := newNaiveServer(t, func(s *naiveServer) { s.slow = 6 * time.Second })
	h := newHarness(t, up, limits{timeout: 1500 * time.Millisecond})
	c := h.stdio()
	start := time.Now()
	c.send(toolCall(1, "slow", ""))
	waitRunning(t, up, 1)
	c.send(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`)
	var rec *audit.Record
	for rec == nil && time.Since(start) < 10*time.Second {
		for _, r := range h.records() {
			if r.Tool == "slow" {
				rec = &r
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec == nil {
		t.Fatal("the cancelled call was never recorded")
	}
	took := time.Since(start)
	t.Logf("settled after %v", took)
	if took > 4*time.Second {
		t.Errorf("the cancelled call settled after %v; its deadline was 1.5s", took)
	}
	if !strings.Contains(rec.Reason, "cancelled by the client") || rec.Outcome != audit.OutcomeAllowed {
		t.Errorf("record: %s %q", rec.Outcome, rec.Reason)
	}
}
