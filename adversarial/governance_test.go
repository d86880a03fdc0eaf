package adversarial

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
)

// Issue 11, point 2: a tools/call sent as a notification — no id, or a
// null one — reaches no upstream and is recorded as refused; so is any
// other request sent without an id. Over stdio it gets an error with a
// null id; the session goes on.
func TestNotificationSmugglingStdio(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{calls: 5})
	c := h.stdio()
	for _, line := range []string{
		`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"admin.wipe","arguments":{}}}`,
		`{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"fs.write","arguments":{}}}`,
		`{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{}}}`,
		`{"jsonrpc":"2.0","method":"tools/list"}`,
		`{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"file:///etc/passwd"}}`,
		`{"jsonrpc":"2.0","method":"tasks/result","params":{"taskId":"task-1"}}`,
		`{"jsonrpc":"2.0","method":"x-vendor/run","params":{"name":"fs.write"}}`,
	} {
		c.send(line)
		select {
		case m := <-c.other:
			if m.Error == nil || m.Error.Code != -32600 || string(m.ID) != "null" && len(m.ID) != 0 {
				t.Errorf("%s: answered %+v, want a -32600 error with a null id", line, m)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: no answer", line)
		}
	}
	// Notifications of MCP's own still pass, and the session goes on.
	c.send(`{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`)
	if r := c.call(toolCall(9, "fs.read", ""), "9"); r.Error != nil {
		t.Fatalf("a call after the smuggling: %+v", r.Error)
	}
	if n := up.ranTool("admin.wipe") + up.ranTool("fs.write"); n != 0 {
		t.Errorf("the upstream ran %d smuggled calls", n)
	}
	var refused []string
	for _, rec := range h.records() {
		if rec.Event == agentsec.EventToolCall && rec.Outcome == audit.OutcomeDenied {
			refused = append(refused, rec.Tool)
		}
	}
	if want := []string{"admin.wipe", "fs.write", "(none)"}; strings.Join(refused, ",") != strings.Join(want, ",") {
		t.Errorf("refusals recorded for tools %q, want %q", refused, want)
	}
	h.checkInvariants()
}

// Over HTTP a smuggled request is answered 400 with the JSON-RPC error.
func TestNotificationSmugglingHTTP(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{calls: 5})
	f := h.http()
	session, _ := f.open(agentToken)
	for _, body := range []string{
		`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"fs.write","arguments":{}}}`,
		`{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"fs.write","arguments":{}}}`,
		`{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"file:///x"}}`,
	} {
		status, answer, _ := f.post(agentToken, session, body)
		if status != http.StatusBadRequest || !strings.Contains(string(answer), "sent as a notification") {
			t.Errorf("%s: %d %s, want 400 saying it was sent as a notification", body, status, answer)
		}
	}
	if n := up.ranTool("fs.write"); n != 0 {
		t.Errorf("the upstream ran %d smuggled calls", n)
	}
	if _, m := f.callTool(agentToken, session, 2, "fs.read", ""); !strings.Contains(string(m.Result), "done: fs.read") {
		t.Errorf("a call after the smuggling: %s", m.Result)
	}
	h.checkInvariants()
}

// Point 2 applied to every method: one the gateway can't govern is
// refused, not relayed.
func TestUnknownMethodsRefused(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	c := h.stdio()
	for i, method := range []string{"tools/execute", "x-vendor/run", "notifications/cancelled", "TOOLS/CALL", "tools/call "} {
		id := 20 + i
		r := c.call(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{"name":"fs.write","arguments":{}}}`, id, method), fmt.Sprint(id))
		if r.Error == nil || r.Error.Code != -32601 {
			t.Errorf("%q: answered %+v %s, want -32601", method, r.Error, r.Result)
		}
	}
	if n := up.executions(); n != 0 {
		t.Errorf("the upstream ran %d calls", n)
	}
}

// Issue 11, point 5: with a default level for tools no rule covers, a
// name that differs from a listed tool — by case, a trailing NUL or
// space, a look-alike letter — fell to that level, and a server that
// reads names loosely ran the listed tool. A name the upstream never
// listed is refused, and recorded.
func TestLookAlikeToolNames(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.loose = true })
	h := newHarness(t, up, limits{defaultLevel: "public"})
	c := h.stdio()
	names := []string{"ADMIN.WIPE", "Admin.wipe", "admin.wipe\u0000", "admin.wipe ", "\u0430dmin.wipe", "admin.wipe\u200b"}
	for i, name := range names {
		id := 30 + i
		line, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": "tools/call",
			"params": map[string]any{"name": name, "arguments": map[string]any{}}})
		r := c.call(string(line), fmt.Sprint(id))
		if text, isErr := resultText(r); !isErr || !strings.Contains(text, "offers no tool named") {
			t.Errorf("%q: answered %q %+v, want a refusal naming the unlisted tool", name, text, r.Error)
		}
	}
	if n := up.ranTool("admin.wipe"); n != 0 {
		t.Errorf("the upstream ran admin.wipe %d times under look-alike names", n)
	}
	denied := 0
	for _, rec := range h.records() {
		if rec.Outcome == audit.OutcomeDenied && strings.Contains(rec.Reason, "offers no tool named") {
			denied++
		}
	}
	if denied != len(names) {
		t.Errorf("%d refusals recorded, want %d", denied, len(names))
	}
	// The real name is still judged by its rule.
	r := c.call(toolCall(50, "admin.wipe", ""), "50")
	if text, isErr := resultText(r); !isErr || !strings.Contains(text, "below the required level") {
		t.Errorf("admin.wipe: %q, want a trust denial", text)
	}
	h.checkInvariants()
}

// The tools the gateway lists for itself are read with exact keys too: a
// list item's second spelling of "name" names no tool a call may use.
func TestListedNamesReadExactly(t *testing.T) {
	up := newNaiveServer(t, func(s *naiveServer) { s.shadowNames = true })
	h := newHarness(t, up, limits{defaultLevel: "public"})
	c := h.stdio()
	r := c.call(toolCall(1, "shadow.fs.read", ""), "1")
	if text, isErr := resultText(r); !isErr || !strings.Contains(text, "offers no tool named") {
		t.Errorf("a call to a shadow name: %q %+v, want a refusal naming the unlisted tool", text, r.Error)
	}
	if r := c.call(toolCall(2, "fs.read", ""), "2"); !strings.Contains(string(r.Result), "done: fs.read") {
		t.Errorf("a call to the listed name: %s %+v", r.Result, r.Error)
	}
}

// With allow_unlisted_tools the operator takes that risk knowingly.
func TestUnlistedToolsAllowedWhenConfigured(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{defaultLevel: "public", allowUnlisted: true})
	c := h.stdio()
	r := c.call(toolCall(1, "not.listed", ""), "1")
	if text, _ := resultText(r); strings.Contains(text, "offers no tool named") {
		t.Errorf("an unlisted tool was refused with allow_unlisted_tools: %q", text)
	}
}

// Issue 11, point 6: ids come back byte for byte, however large or
// however written.
func TestIDsRoundTrip(t *testing.T) {
	up := newNaiveServer(t)
	h := newHarness(t, up, limits{})
	c := h.stdio()
	for _, id := range []string{"9223372036854775807", "-9223372036854775808", "9007199254740993", "18446744073709551616",
		"1.0", "1e3", "-0", "0", `"\u0000n:1"`, `"x"`} {
		r := c.call(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"ping"}`, id), id)
		if !strings.Contains(string(r.Params), `"id":`+id+`,`) && !strings.Contains(string(r.Params), `"id":`+id+`}`) {
			// The answer came back under the id as sent (deliver matched
			// it byte for byte); say how it looked.
			t.Errorf("id %s: the answer is %s", id, r.Params)
		}
	}
}
