package adversarial

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// naiveServer is an MCP server over streamable HTTP that runs every tool
// call that reaches it, whatever came before or after: it ignores
// cancellation, answers late, and looks tools up loosely (without regard
// to case, trailing spaces or NULs) when asked to. It counts what it
// executed, by the session that asked — the ground truth the gateway's
// promises are checked against.
type naiveServer struct {
	t   *testing.T
	srv *httptest.Server

	// loose makes tool lookup normalising: "FS.WRITE\x00 " runs fs.write.
	loose bool
	// tasks makes it support task-augmented tools/call (2025-11-25).
	tasks bool
	// slow is how long the "slow" tool takes; it runs to the end even if
	// cancelled, then answers.
	slow time.Duration
	// hold, if set, makes "slow" run until it is closed instead.
	hold chan struct{}
	// shadowNames lists each tool with a second key "NAME" besides
	// "name": a reader that matches keys without regard to case takes
	// "shadow.<name>" for its name.
	shadowNames bool

	mu         sync.Mutex
	executed   map[string]int // by gateway session (the upstream session)
	byTool     map[string]int
	cancels    int
	deletes    int
	taskSeq    int
	taskResult map[string]string // task id → result text
	sessions   int

	running atomic.Int64
}

// tools is what the naive server lists. "big" answers text of the size
// its "size" argument asks; "fail" answers a JSON-RPC error; "slow"
// takes naiveServer.slow.
var naiveTools = []string{"fs.read", "fs.write", "admin.wipe", "big", "fail", "failbig", "slow"}

func newNaiveServer(t *testing.T, opts ...func(*naiveServer)) *naiveServer {
	s := &naiveServer{t: t, executed: map[string]int{}, byTool: map[string]int{}, taskResult: map[string]string{},
		slow: 300 * time.Millisecond}
	for _, o := range opts {
		o(s)
	}
	s.srv = httptest.NewServer(s)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *naiveServer) URL() string { return s.srv.URL + "/mcp" }

// executions returns how many calls the server ran in all.
func (s *naiveServer) executions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.executed {
		n += c
	}
	return n
}

// maxPerSession returns the most calls it ran for one upstream session.
func (s *naiveServer) maxPerSession() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	most := 0
	for _, c := range s.executed {
		most = max(most, c)
	}
	return most
}

func (s *naiveServer) ranTool(tool string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byTool[tool]
}

type rpcMessage struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

type rpcError struct {
	Code    int64  `json:"code"`
	Message string `json:"message"`
}

func (s *naiveServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodDelete:
		s.mu.Lock()
		s.deletes++
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		return
	case http.MethodPost:
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var msg rpcMessage
	if err := json.Unmarshal(body, &msg); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	session := r.Header.Get("Mcp-Session-Id")
	if len(msg.ID) == 0 { // a notification
		if msg.Method == "notifications/cancelled" {
			s.mu.Lock()
			s.cancels++
			s.mu.Unlock()
		}
		if msg.Method == "tools/call" { // a naive server runs even this
			s.execute(session, msg.Params)
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if msg.Method == "" { // a response to a request of ours: none are sent
		w.WriteHeader(http.StatusAccepted)
		return
	}
	result, rerr := s.handle(r.Context(), session, &msg, w)
	out := rpcMessage{JSONRPC: "2.0", ID: msg.ID, Result: result, Error: rerr}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (s *naiveServer) handle(ctx context.Context, session string, msg *rpcMessage, w http.ResponseWriter) (json.RawMessage, *rpcError) {
	switch msg.Method {
	case "initialize":
		s.mu.Lock()
		s.sessions++
		id := fmt.Sprintf("up-%d", s.sessions)
		s.mu.Unlock()
		w.Header().Set("Mcp-Session-Id", id)
		caps := `{"tools":{}}`
		if s.tasks {
			caps = `{"tools":{},"tasks":{"list":{},"cancel":{},"requests":{"tools":{"call":{}}}}}`
		}
		return json.RawMessage(`{"protocolVersion":"2025-11-25","capabilities":` + caps + `,"serverInfo":{"name":"naive","version":"1"}}`), nil
	case "ping":
		return json.RawMessage(`{}`), nil
	case "tools/list":
		var items []string
		for _, name := range naiveTools {
			exec := ""
			if s.tasks {
				exec = `,"execution":{"taskSupport":"optional"}`
			}
			shadow := ""
			if s.shadowNames {
				shadow = fmt.Sprintf(`,"NAME":%q`, "shadow."+name)
			}
			items = append(items, fmt.Sprintf(`{"name":%q%s,"inputSchema":{"type":"object"}%s}`, name, shadow, exec))
		}
		return json.RawMessage(`{"tools":[` + strings.Join(items, ",") + `]}`), nil
	case "tools/call":
		var p struct {
			Task json.RawMessage `json:"task"`
		}
		json.Unmarshal(msg.Params, &p)
		if s.tasks && len(p.Task) > 0 {
			text, rerr := s.execute(session, msg.Params)
			if rerr != nil {
				return nil, rerr
			}
			s.mu.Lock()
			s.taskSeq++
			id := fmt.Sprintf("task-%d", s.taskSeq)
			s.taskResult[id] = text
			s.mu.Unlock()
			return json.RawMessage(fmt.Sprintf(`{"task":{"taskId":%q,"status":"completed","createdAt":"2026-12-04T00:00:00Z","lastUpdatedAt":"2026-12-04T00:00:00Z","ttl":60000}}`, id)), nil
		}
		text, rerr := s.execute(session, msg.Params)
		if rerr != nil {
			return nil, rerr
		}
		b, _ := json.Marshal(map[string]any{"content": []map[string]string{{"type": "text", "text": text}}})
		return b, nil
	case "tasks/get", "tasks/result", "tasks/cancel":
		var p struct {
			TaskID string `json:"taskId"`
		}
		json.Unmarshal(msg.Params, &p)
		s.mu.Lock()
		text, ok := s.taskResult[p.TaskID] // any session's: a naive server doesn't check
		s.mu.Unlock()
		if !ok {
			return nil, &rpcError{Code: -32602, Message: "no such task"}
		}
		if msg.Method == "tasks/result" {
			b, _ := json.Marshal(map[string]any{"content": []map[string]string{{"type": "text", "text": text}}})
			return b, nil
		}
		return json.RawMessage(fmt.Sprintf(`{"taskId":%q,"status":"completed","createdAt":"2026-12-04T00:00:00Z","lastUpdatedAt":"2026-12-04T00:00:00Z","ttl":60000}`, p.TaskID)), nil
	case "tasks/list":
		s.mu.Lock()
		var items []string
		for id := range s.taskResult {
			items = append(items, fmt.Sprintf(`{"taskId":%q,"status":"completed","createdAt":"2026-12-04T00:00:00Z","lastUpdatedAt":"2026-12-04T00:00:00Z","ttl":60000}`, id))
		}
		s.mu.Unlock()
		return json.RawMessage(`{"tasks":[` + strings.Join(items, ",") + `]}`), nil
	}
	// A naive server answers anything.
	return json.RawMessage(`{}`), nil
}

// execute runs a tool call, counting it, and returns its result text or
// the error it answers with.
func (s *naiveServer) execute(session string, params json.RawMessage) (string, *rpcError) {
	var p struct {
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	}
	json.Unmarshal(params, &p)
	name := p.Name
	if s.loose {
		name = strings.ToLower(strings.TrimRight(name, " \x00"))
	}
	known := false
	for _, n := range naiveTools {
		known = known || n == name
	}
	if !known {
		return "", &rpcError{Code: -32602, Message: "unknown tool " + name}
	}
	s.mu.Lock()
	s.executed[session]++
	s.byTool[name]++
	s.mu.Unlock()
	s.running.Add(1)
	defer s.running.Add(-1)
	switch name {
	case "slow":
		if s.hold != nil {
			<-s.hold
		} else {
			time.Sleep(s.slow) // runs to the end, cancelled or not
		}
		return "slow done", nil
	case "big":
		size, _ := p.Arguments["size"].(float64)
		return strings.Repeat("word ", int(size)/5), nil
	case "fail":
		return "", &rpcError{Code: -32603, Message: "the tool failed"}
	case "failbig": // an error whose message is the payload
		size, _ := p.Arguments["size"].(float64)
		return "", &rpcError{Code: -32603, Message: strings.Repeat("word ", int(size)/5)}
	}
	return "done: " + name, nil
}
