package adversarial

import (
	"bytes"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/mcpgate"
)

// FuzzHTTPFront drives the HTTP gateway with arbitrary request sequences
// from agents holding valid tokens and from peers holding none, in front
// of a naive upstream, and checks the gateway's promises after each
// sequence: the upstream executed no session's calls past its limit,
// every execution is recorded, the log verifies, nothing panicked, and a
// polite client is still served.
//
// The input is a script, one step a line: the first byte says how the
// rest is sent —
//
//	s  POST it in the current session and wait for the answer
//	a  POST it in the current session without waiting
//	x  POST it with no token
//	o  POST it in the current session with another agent's token
//	n  start a new session (the rest is ignored)
//	d  DELETE the current session
//	w  wait for the requests sent without waiting
func FuzzHTTPFront(f *testing.F) {
	for _, seed := range []string{
		"s" + toolCall(1, "fs.read", ""),
		"a" + toolCall(1, "slow", "") + "\ns" + `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}` + "\nw\ns" + toolCall(2, "fs.read", ""),
		"s" + `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"fs.write"}}`,
		"s" + `{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"fs.write"}}`,
		"s[" + toolCall(1, "fs.write", "") + "]",
		"s" + toolCall(1, "FS.WRITE", "") + "\ns" + toolCall(2, "fs.write\u0000", ""),
		"s" + `{"jsonrpc":"2.0","id":9223372036854775807,"method":"tools/call","params":{"name":"fs.read"}}`,
		"s" + `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":100000},"task":{}}}` +
			"\ns" + `{"jsonrpc":"2.0","id":2,"method":"tasks/result","params":{"taskId":"task-1"}}` +
			"\ns" + `{"jsonrpc":"2.0","id":3,"method":"tasks/result","params":{"taskId":"task-1"}}`,
		"n\ns" + `{"jsonrpc":"2.0","id":4,"method":"tasks/result","params":{"taskId":"task-1"}}`,
		"a" + toolCall(1, "fs.read", "") + "\na" + toolCall(1, "fs.read", "") + "\na" + toolCall(2, "fail", "") + "\nw",
		"x" + toolCall(1, "fs.read", "") + "\no" + toolCall(2, "fs.read", ""),
		"d\ns" + toolCall(3, "fs.read", ""),
		"s" + `{"jsonrpc":"2.0","id":1,"method":"tools/execute","params":{"name":"fs.write"}}`,
		"s{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"fs.read\",\"NAME\":\"admin.wipe\"}}",
		"s" + `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":50000}}}`,
		"snot json",
		"s" + strings.Repeat("a", 300),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, script string) {
		if len(script) > 64<<10 {
			return
		}
		up := newNaiveServer(t, func(s *naiveServer) { s.tasks = true; s.slow = 50 * time.Millisecond })
		// Both of the gateway's paths to an upstream, by the script's
		// length: answers on the caller's goroutine, or through Read.
		h := newHarness(t, up, limits{calls: 3, tokens: 2000, callTokens: 1500, timeout: 2 * time.Second,
			viaRead: len(script)%2 == 1})
		var panicked bool
		fr := h.http(func(g *mcpgate.Gateway) { g.MaxSessions = 20 })
		inner := fr.srv.Config.Handler
		fr.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if p := recover(); p != nil {
					panicked = true
					t.Errorf("the gateway panicked: %v", p)
				}
			}()
			inner.ServeHTTP(w, r)
		})
		session, _ := fr.open(agentToken)
		var wg sync.WaitGroup
		for _, line := range strings.Split(script, "\n") {
			if line == "" {
				continue
			}
			op, body := line[0], line[1:]
			switch op {
			case 's':
				fr.post(agentToken, session, body)
			case 'a':
				wg.Go(func() { fr.post(agentToken, session, body) })
			case 'x':
				fr.post("", session, body)
			case 'o':
				fr.post(otherToken, session, body)
			case 'n':
				session, _ = fr.open(agentToken)
			case 'd':
				if session != "" {
					req, _ := http.NewRequest(http.MethodDelete, fr.url, nil)
					req.Header.Set("Authorization", "Bearer "+agentToken)
					req.Header.Set("Mcp-Session-Id", session)
					if resp, err := client.Do(req); err == nil {
						resp.Body.Close()
					}
				}
			case 'w':
				wg.Wait()
			}
		}
		wg.Wait()
		if panicked {
			return
		}
		h.waitRecords(up.executions())
		h.checkInvariants()
		polite, status := fr.open(otherToken)
		if status != http.StatusOK {
			t.Fatalf("a polite client after the script: initialize answered %d", status)
		}
		if _, m := fr.callTool(otherToken, polite, 1, "fs.read", ""); !bytes.Contains(m.Result, []byte("done: fs.read")) {
			t.Errorf("a polite client after the script: %s %+v", m.Result, m.Error)
		}
	})
}
