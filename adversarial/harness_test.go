package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// limits of a harness's sessions.
type limits struct {
	calls, tokens, callTokens int64
	defaultLevel              string // the policy's level for tools no rule covers
	allowUnlisted             bool
	timeout                   time.Duration // the upstream's
	budgetStore               budget.Store  // nil: a memory store of the stack's own
	// viaRead makes the upstream's answers come through its connection's
	// Read, as a stdio server's do, instead of on the caller's goroutine
	// as an HTTP server's POST answers do: the gateway's other path.
	viaRead bool
}

// harness is a gateway in front of a naive server, with its stack.
type harness struct {
	t     *testing.T
	up    *naiveServer
	stack *agentsec.Stack
	lim   limits
}

// Agents and their tokens. The rules: fs.read is public, fs.write
// verified, admin.* privileged; big, fail and slow public.
const (
	agentToken = "agent-token" // "agent", level verified
	otherToken = "other-token" // "other", level verified
)

func newHarness(t *testing.T, up *naiveServer, lim limits) *harness {
	t.Helper()
	if lim.calls == 0 {
		lim.calls = 1000
	}
	if lim.tokens == 0 {
		lim.tokens = 1 << 40
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{
				{Tool: "fs.read", Level: "public"}, {Tool: "fs.write", Level: "verified"},
				{Tool: "admin.*", Level: "privileged"},
				{Tool: "big", Level: "public"}, {Tool: "fail", Level: "public"}, {Tool: "failbig", Level: "public"},
				{Tool: "slow", Level: "public"},
			},
			DefaultLevel: lim.defaultLevel,
			Agents: []trust.Assignment{{Agent: "agent", Level: "verified"}, {Agent: "other", Level: "verified"},
				{Agent: "desktop", Level: "verified"}},
		},
		Budget: agentsec.BudgetConfig{TokenLimit: lim.tokens, CallLimit: lim.calls, CallTokenLimit: lim.callTokens,
			Store: lim.budgetStore},
		AuditNamespace: "adversarial",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	return &harness{t: t, up: up, stack: stack, lim: lim}
}

func (h *harness) upstreams() []mcpgate.Upstream {
	u := mcpgate.HTTPUpstream("naive", h.up.URL(), h.lim.timeout)
	if h.lim.viaRead {
		connect := u.Connect
		u.Connect = func(ctx context.Context) (mcp.Connection, error) {
			c, err := connect(ctx)
			return readOnlyConn{c}, err
		}
	}
	return []mcpgate.Upstream{u}
}

// readOnlyConn is a connection whose answers come only through Read: it
// hides any other way its type has.
type readOnlyConn struct{ mcp.Connection }

// records returns every record of the log.
func (h *harness) records() []audit.Record {
	h.t.Helper()
	var all []audit.Record
	cursor := ""
	for {
		page, err := h.stack.Audit.Query(context.Background(), audit.Filter{Cursor: cursor, Limit: audit.MaxLimit})
		if err != nil {
			h.t.Fatal(err)
		}
		all = append(all, page.Records...)
		if page.Next == "" {
			return all
		}
		cursor = page.Next
	}
}

// executedRecords counts the tool.call records of calls that may have
// reached the upstream: allowed ones but those that failed before they
// were sent ("tool failed: …", whose slot was given back), and denials of
// a result withheld after the call ran.
func executedRecords(recs []audit.Record) int {
	n := 0
	for _, r := range recs {
		if r.Event != agentsec.EventToolCall {
			continue
		}
		if r.Outcome == audit.OutcomeAllowed && !strings.HasPrefix(r.Reason, "tool failed: ") || r.Attrs["withheld_tokens"] != "" {
			n++
		}
	}
	return n
}

// checkInvariants checks the gateway's promises after an attack: no
// upstream session ran more calls than a session's limit, every
// execution is recorded, and the log verifies.
func (h *harness) checkInvariants() {
	h.t.Helper()
	// Let calls the gateway gave up on finish at the server first.
	deadline := time.Now().Add(10 * time.Second)
	for h.up.running.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// A call the upstream finished is recorded once its answer is back.
	h.waitRecords(h.up.executions())
	if most := h.up.maxPerSession(); int64(most) > h.lim.calls {
		h.t.Errorf("an upstream session executed %d calls; the session's limit is %d", most, h.lim.calls)
	}
	recs := h.records()
	if ex, rec := h.up.executions(), executedRecords(recs); ex > rec {
		h.t.Errorf("the upstream executed %d calls; the log records %d that reached it", ex, rec)
	}
	if _, err := h.stack.Audit.Verify(context.Background()); err != nil {
		h.t.Errorf("the log does not verify: %v", err)
	}
}

// stdioClient speaks raw JSON-RPC lines to a Proxy over pipes.
type stdioClient struct {
	t    *testing.T
	in   io.WriteCloser
	mu   sync.Mutex
	wait map[string]chan rpcMessage // by id, as JSON
	// other receives what answers no request: errors with a null id,
	// notifications, requests.
	other chan rpcMessage
	done  chan error
}

// stdio starts a Proxy for agent "desktop" and returns its client, with
// the session initialized.
func (h *harness) stdio() *stdioClient {
	h.t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &stdioClient{t: h.t, in: inW, wait: map[string]chan rpcMessage{}, other: make(chan rpcMessage, 1024), done: make(chan error, 1)}
	p := &mcpgate.Proxy{Stack: h.stack, Agent: "desktop", Upstreams: h.upstreams(), AllowUnlistedTools: h.lim.allowUnlisted}
	go func() { c.done <- p.Serve(context.Background(), mcpgate.NewStdioConn(inR, outW, 0)) }()
	go func() {
		sc := bufio.NewScanner(outR)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var m rpcMessage
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				h.t.Errorf("the gateway wrote a line that is not JSON: %q", sc.Text())
				continue
			}
			c.deliver(m, sc.Bytes())
		}
	}()
	h.t.Cleanup(func() {
		inW.Close()
		outR.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			h.t.Error("the proxy did not end when its stdin closed")
		}
	})
	if r := c.call(`{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}`, `"init"`); r.Error != nil {
		h.t.Fatalf("initialize: %+v", r.Error)
	}
	c.send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	return c
}

func (c *stdioClient) deliver(m rpcMessage, raw []byte) {
	key := string(m.ID)
	c.mu.Lock()
	ch := c.wait[key]
	delete(c.wait, key)
	c.mu.Unlock()
	if ch != nil && m.Method == "" {
		m.Params = append(json.RawMessage(nil), raw...) // the whole line, for byte checks
		ch <- m
		return
	}
	select {
	case c.other <- m:
	default:
	}
}

// send writes one line.
func (c *stdioClient) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		c.t.Fatalf("writing to the proxy: %v", err)
	}
}

// expect registers for the answer to id (its JSON) before the request
// goes.
func (c *stdioClient) expect(id string) chan rpcMessage {
	ch := make(chan rpcMessage, 1)
	c.mu.Lock()
	c.wait[id] = ch
	c.mu.Unlock()
	return ch
}

// call sends a request and waits for its answer.
func (c *stdioClient) call(line, id string) rpcMessage {
	c.t.Helper()
	ch := c.expect(id)
	c.send(line)
	select {
	case m := <-ch:
		return m
	case <-time.After(20 * time.Second):
		c.t.Fatalf("no answer to %s", line)
		return rpcMessage{}
	}
}

// toolCall is a tools/call line with a numeric id.
func toolCall(id int, tool string, args string) string {
	if args == "" {
		args = "{}"
	}
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":%s}}`, id, tool, args)
}

// resultText is the text of a tool result, and whether it is an error.
func resultText(m rpcMessage) (string, bool) {
	var r struct {
		Content []struct {
			Text string `json:"text"`
		} `json:"content"`
		IsError bool `json:"isError"`
	}
	json.Unmarshal(m.Result, &r)
	var b strings.Builder
	for _, c := range r.Content {
		b.WriteString(c.Text)
	}
	return b.String(), r.IsError
}

// httpFront is a Gateway in front of the harness's upstream.
type httpFront struct {
	h   *harness
	url string
	srv *httptest.Server // nil for a gateway in another process
	gw  *mcpgate.Gateway
}

func (h *harness) http(set ...func(*mcpgate.Gateway)) *httpFront {
	h.t.Helper()
	gw := &mcpgate.Gateway{Stack: h.stack, Upstreams: h.upstreams(), AllowUnlistedTools: h.lim.allowUnlisted,
		Agents: []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte(agentToken)), Agent: "agent"},
			{TokenSHA256: sha256.Sum256([]byte(otherToken)), Agent: "other"}}}
	for _, f := range set {
		f(gw)
	}
	srv := httptest.NewServer(gw)
	h.t.Cleanup(func() {
		gw.Close()
		srv.CloseClientConnections()
		srv.Close()
	})
	return &httpFront{h: h, url: srv.URL, srv: srv, gw: gw}
}

// post sends one body with the token (and session, if any) and returns
// the status, the answer and the session id it names.
func (f *httpFront) post(token, session, body string) (int, []byte, string) {
	f.h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	resp, err := client.Do(req)
	if err != nil {
		f.h.t.Errorf("POST: %v", err)
		return 0, nil, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b = lastEvent(b)
	}
	return resp.StatusCode, b, resp.Header.Get("Mcp-Session-Id")
}

// client is the hostile client's HTTP client: a request that hangs fails
// the test rather than holding it.
var client = &http.Client{Timeout: 30 * time.Second}

// lastEvent is the data of an event stream's last event.
func lastEvent(b []byte) []byte {
	var last []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if d, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			last = d
		}
	}
	return last
}

// open initializes a session for the token and returns its id.
func (f *httpFront) open(token string) (string, int) {
	f.h.t.Helper()
	status, _, id := f.post(token, "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}`)
	if status == http.StatusOK {
		f.post(token, id, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	}
	return id, status
}

// callTool calls a tool in a session and returns the decoded answer.
func (f *httpFront) callTool(token, session string, id int, tool, args string) (int, rpcMessage) {
	f.h.t.Helper()
	status, body, _ := f.post(token, session, toolCall(id, tool, args))
	var m rpcMessage
	json.Unmarshal(body, &m)
	return status, m
}
