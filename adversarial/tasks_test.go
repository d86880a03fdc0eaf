package adversarial

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
)

// Issue 11, point 3: a task-augmented tools/call answers with a receipt,
// and the real result comes through tasks/result — which was relayed
// uncounted, as often as asked, for any task id. Now a task's result is
// counted once, when delivered, against the session that created it; a
// second fetch is refused, and so is every tasks/* request for a task the
// session didn't create.
func TestTasksAreGoverned(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.tasks = true })
	h := newHarness(t, up, limits{tokens: 50})
	c := h.stdio()
	receipt := c.call(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":200000},"task":{"ttl":60000}}}`, "1")
	if receipt.Error != nil || !strings.Contains(string(receipt.Result), `"taskId":"task-1"`) {
		t.Fatalf("the task's receipt: %+v %s", receipt.Error, receipt.Result)
	}
	first := c.call(`{"jsonrpc":"2.0","id":2,"method":"tasks/result","params":{"taskId":"task-1"}}`, "2")
	text, isErr := resultText(first)
	if isErr || len(text) < 100_000 {
		t.Fatalf("the first fetch of the result: %v, %d bytes", isErr, len(text))
	}
	st, err := h.stack.Budget.Usage(context.Background(), h.onlySession(t))
	if err != nil || st.Used.Tokens < 10_000 {
		t.Errorf("tokens counted after the result: %+v, %v; want the result's", st.Used, err)
	}
	for i := range 2 {
		again := c.call(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tasks/result","params":{"taskId":"task-1"}}`, 3+i), fmt.Sprint(3+i))
		if again.Error == nil || !strings.Contains(again.Error.Message, "delivered already") {
			t.Errorf("fetch %d of a delivered result: %+v", i+2, again)
		}
	}
	// The session's tokens are spent: no other task may start.
	denied := c.call(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"big","arguments":{"size":200000},"task":{}}}`, "9")
	if text, isErr := resultText(denied); !isErr || !strings.Contains(text, "token limit reached") {
		t.Errorf("a second task after the limit: %q", text)
	}
	// Another session can't reach this one's task at all.
	other := h.stdio()
	for i, method := range []string{"tasks/get", "tasks/result", "tasks/cancel"} {
		r := other.call(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{"taskId":"task-1"}}`, 40+i, method), fmt.Sprint(40+i))
		if r.Error == nil || !strings.Contains(r.Error.Message, "unknown task") {
			t.Errorf("%s of another session's task: %+v %s", method, r.Error, r.Result)
		}
	}
	list := other.call(`{"jsonrpc":"2.0","id":50,"method":"tasks/list"}`, "50")
	if strings.Contains(string(list.Result), "task-1") {
		t.Errorf("tasks/list shows another session's task: %s", list.Result)
	}
	if own := c.call(`{"jsonrpc":"2.0","id":51,"method":"tasks/list"}`, "51"); !strings.Contains(string(own.Result), "task-1") {
		t.Errorf("tasks/list doesn't show the session's own task: %s", own.Result)
	}
	var results int
	for _, rec := range h.records() {
		if rec.Event == agentsec.EventToolResult && rec.Outcome == audit.OutcomeAllowed {
			results++
		}
	}
	if results != 1 {
		t.Errorf("%d delivered task results recorded, want 1", results)
	}
	h.checkInvariants()
}

// A task's result over the per-call ceiling is withheld, once.
func TestTaskResultOverCeilingWithheld(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.tasks = true })
	h := newHarness(t, up, limits{callTokens: 100})
	c := h.stdio()
	c.call(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":200000},"task":{}}}`, "1")
	r := c.call(`{"jsonrpc":"2.0","id":2,"method":"tasks/result","params":{"taskId":"task-1"}}`, "2")
	if text, isErr := resultText(r); !isErr || !strings.Contains(text, "result withheld") || len(text) > 1000 {
		t.Errorf("a task result over the ceiling: %.200q", text)
	}
	r = c.call(`{"jsonrpc":"2.0","id":3,"method":"tasks/result","params":{"taskId":"task-1"}}`, "3")
	if r.Error == nil {
		t.Errorf("a second fetch of a withheld result: %s", r.Result)
	}
	h.checkInvariants()
}

// onlySession is the one budget session a test's calls were charged to.
func (h *harness) onlySession(t *testing.T) string {
	t.Helper()
	for _, rec := range h.records() {
		if rec.Event == agentsec.EventToolCall {
			return rec.Session
		}
	}
	t.Fatal("no call recorded")
	return ""
}
