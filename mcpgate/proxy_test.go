package mcpgate_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

type echoIn struct {
	Text string `json:"text"`
}

// upstream is an MCP server with three tools, counting the calls that
// reach it.
type upstream struct {
	server   *mcp.Server
	calls    atomic.Int64
	connects atomic.Int64
	release  chan struct{} // fs.block waits for it
	stopped  atomic.Int64  // fs.block calls cancelled by the client
}

func newUpstream() *upstream {
	u := &upstream{server: mcp.NewServer(&mcp.Implementation{Name: "upstream", Version: "1"}, nil), release: make(chan struct{})}
	mcp.AddTool(u.server, &mcp.Tool{Name: "fs.block", Description: "waits"},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ echoIn) (*mcp.CallToolResult, any, error) {
			u.calls.Add(1)
			select {
			case <-u.release:
			case <-ctx.Done():
				u.stopped.Add(1)
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "released"}}}, nil, nil
		})
	handler := func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
		u.calls.Add(1)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + in.Text}}}, nil, nil
	}
	for _, name := range []string{"fs.read", "fs.write", "shell.exec"} {
		mcp.AddTool(u.server, &mcp.Tool{Name: name, Description: "echoes its text"}, handler)
	}
	// fs.slow reports progress in the middle of the call: server-to-client
	// notifications that must cross the gateway while the call is held.
	mcp.AddTool(u.server, &mcp.Tool{Name: "fs.slow", Description: "reports progress"},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			u.calls.Add(1)
			for i := range 3 {
				err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
					ProgressToken: req.Params.GetProgressToken(), Progress: float64(i + 1), Total: 3, Message: in.Text})
				if err != nil {
					return nil, nil, err
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil, nil
		})
	u.server.AddResource(&mcp.Resource{URI: "file:///readme", Name: "readme", MIMEType: "text/plain"},
		func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: "file:///readme", Text: "hello"}}}, nil
		})
	return u
}

// connect opens a new in-memory connection to the upstream server, as a
// fresh process of a stdio server would be.
func (u *upstream) connect(ctx context.Context) (mcp.Connection, error) {
	u.connects.Add(1)
	serverSide, proxySide := mcp.NewInMemoryTransports()
	if _, err := u.server.Connect(ctx, serverSide, nil); err != nil {
		return nil, err
	}
	return proxySide.Connect(ctx)
}

type gateway struct {
	mu       sync.Mutex
	upConn   mcp.Connection // the proxy's latest connection to the server
	progress chan *mcp.ProgressNotificationParams
	client   *mcp.ClientSession
	stack    *agentsec.Stack
	up       *upstream
	done     chan error
}

// newStack builds a stack whose agents hold the given levels, each
// session allowed calls calls, its audit log in memory (or in store).
func newStack(t *testing.T, rules []trust.Rule, agents []trust.Assignment, calls int64, store audit.Store) *agentsec.Stack {
	t.Helper()
	stack, err := agentsec.New(agentsec.Config{
		Audit:          agentsec.AuditConfig{Store: store},
		TrustGate:      agentsec.TrustGateConfig{Rules: rules, Agents: agents},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: calls},
		AuditNamespace: "mcpgate-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	return stack
}

// newGateway connects an SDK client to an SDK server through a proxy, all
// in memory.
func newGateway(t *testing.T, calls int64) *gateway {
	t.Helper()
	return newGatewayWithAudit(t, calls, nil)
}

// dropNotifications makes newGateway's client side refuse server
// notifications, as the HTTP transport does while no stream is open.
var dropNotifications bool

// refusingConn refuses to deliver notifications to the client.
type refusingConn struct{ mcp.Connection }

func (c refusingConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	if req, ok := msg.(*jsonrpc.Request); ok && !req.IsCall() {
		return errors.New("undelivered message: stream not connected")
	}
	return c.Connection.Write(ctx, msg)
}

// newGatewayWithAudit is newGateway with the stack's audit store given.
func newGatewayWithAudit(t *testing.T, calls int64, store audit.Store) *gateway {
	t.Helper()
	ctx := context.Background()
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}, {Tool: "fs.write", Level: "verified"},
		{Tool: "shell.exec", Level: "privileged"}},
		[]trust.Assignment{{Agent: "desktop", Level: "verified"}}, calls, store)
	up := newUpstream()
	proxyDown, clientSide := mcp.NewInMemoryTransports()
	downConn, err := proxyDown.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dropNotifications {
		downConn = refusingConn{downConn}
	}
	g := &gateway{stack: stack, up: up, done: make(chan error, 1)}
	proxy := &mcpgate.Proxy{Stack: stack, Agent: "desktop", Session: "s-1",
		Upstreams: []mcpgate.Upstream{{Name: "files", Connect: func(ctx context.Context) (mcp.Connection, error) {
			conn, err := up.connect(ctx)
			if err == nil {
				g.mu.Lock()
				g.upConn = conn
				g.mu.Unlock()
			}
			return conn, err
		}}}}
	go func() { g.done <- proxy.Serve(ctx, downConn) }()
	g.progress = make(chan *mcp.ProgressNotificationParams, 16)
	client := mcp.NewClient(&mcp.Implementation{Name: "client", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			g.progress <- req.Params
		},
	})
	if g.client, err = client.Connect(ctx, clientSide, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.client.Close()
		if g.done == nil {
			return
		}
		select {
		case err := <-g.done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after the client closed")
		}
	})
	return g
}

func (g *gateway) call(t *testing.T, tool, text string) *mcp.CallToolResult {
	t.Helper()
	res, err := g.client.CallTool(context.Background(), &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"text": text}})
	if err != nil {
		t.Fatalf("CallTool(%s): %v", tool, err)
	}
	return res
}

func text(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "")
}

func TestToolsListIsFiltered(t *testing.T) {
	g := newGateway(t, 100)
	res, err := g.client.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"fs.block", "fs.read", "fs.slow", "fs.write"}) {
		t.Errorf("tools/list = %v, want the fs tools (shell.exec needs privileged)", names)
	}
}

func TestAllowedCallReturnsTheServersResult(t *testing.T) {
	g := newGateway(t, 100)
	res := g.call(t, "fs.write", "héllo")
	if res.IsError || text(res) != "echo: héllo" {
		t.Errorf("result = %+v %q, want the server's echo", res.IsError, text(res))
	}
	if g.up.calls.Load() != 1 {
		t.Errorf("server saw %d calls, want 1", g.up.calls.Load())
	}
	page, err := g.stack.Audit.Query(context.Background(), audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("audit records: %d, %v", len(page.Records), err)
	}
	rec := page.Records[0]
	if rec.Agent != "desktop" || rec.Tool != "fs.write" || rec.Outcome != audit.OutcomeAllowed || rec.Tokens <= 0 || rec.Session != "s-1" {
		t.Errorf("record = %+v, want the allowed call with its tokens counted", rec)
	}
}

func TestDeniedCallNeverReachesTheServer(t *testing.T) {
	g := newGateway(t, 100)
	res := g.call(t, "shell.exec", "rm -rf /")
	if !res.IsError || !strings.Contains(text(res), "assigned level is below the required level") {
		t.Errorf("result = %v %q, want an error naming the trust reason", res.IsError, text(res))
	}
	res = g.call(t, "no.such.tool", "x")
	if !res.IsError || !strings.Contains(text(res), `the MCP server "files" offers no tool named "no.such.tool"`) {
		t.Errorf("result = %v %q, want an error saying no server offers the tool", res.IsError, text(res))
	}
	if g.up.calls.Load() != 0 {
		t.Errorf("server saw %d calls, want none", g.up.calls.Load())
	}
	page, _ := g.stack.Audit.Query(context.Background(), audit.Filter{Outcome: audit.OutcomeDenied})
	if len(page.Records) != 2 {
		t.Errorf("%d denials recorded, want 2", len(page.Records))
	}
}

func TestBudgetExhaustionMidSession(t *testing.T) {
	g := newGateway(t, 2)
	for i := range 2 {
		if res := g.call(t, "fs.read", "x"); res.IsError {
			t.Fatalf("call %d denied: %q", i, text(res))
		}
	}
	res := g.call(t, "fs.read", "x")
	if !res.IsError || !strings.Contains(text(res), "call limit reached") {
		t.Errorf("third call = %v %q, want a budget denial", res.IsError, text(res))
	}
	if g.up.calls.Load() != 2 {
		t.Errorf("server saw %d calls, want 2", g.up.calls.Load())
	}
	if _, err := g.stack.Audit.Verify(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestEverythingElsePassesThrough(t *testing.T) {
	g := newGateway(t, 100)
	ctx := context.Background()
	if err := g.client.Ping(ctx, nil); err != nil {
		t.Errorf("ping: %v", err)
	}
	res, err := g.client.ReadResource(ctx, &mcp.ReadResourceParams{URI: "file:///readme"})
	if err != nil || len(res.Contents) != 1 || res.Contents[0].Text != "hello" {
		t.Errorf("resources/read = %+v, %v", res, err)
	}
	list, err := g.client.ListResources(ctx, nil)
	if err != nil || len(list.Resources) != 1 {
		t.Errorf("resources/list = %+v, %v", list, err)
	}
	if g.client.InitializeResult().ServerInfo.Name != "upstream" {
		t.Errorf("initialize went to %q, want the upstream", g.client.InitializeResult().ServerInfo.Name)
	}
}

// Progress notifications a server sends during a governed call reach the
// client, in order, with the client's token.
func TestProgressDuringACall(t *testing.T) {
	g := newGateway(t, 100)
	params := &mcp.CallToolParams{Name: "fs.slow", Arguments: map[string]any{"text": "working"}}
	params.SetProgressToken("tok-1")
	res, err := g.client.CallTool(context.Background(), params)
	if err != nil || res.IsError || text(res) != "done" {
		t.Fatalf("fs.slow = %+v, %v", res, err)
	}
	for i := range 3 {
		select {
		case p := <-g.progress:
			if p.ProgressToken != "tok-1" || p.Progress != float64(i+1) || p.Message != "working" {
				t.Errorf("progress %d = %+v", i, p)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("progress notification %d never arrived", i)
		}
	}
}

// A server that goes away mid-call: the client gets a clear error for the
// pending call, the call is recorded, the session stays up, and the next
// call reaches a new connection to the server, initialized as the client
// initialized the first.
func TestUpstreamGoneMidCall(t *testing.T) {
	g := newGateway(t, 100)
	errc := make(chan error, 1)
	go func() {
		_, err := g.client.CallTool(context.Background(), &mcp.CallToolParams{Name: "fs.block", Arguments: map[string]any{"text": "x"}})
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for g.up.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	g.mu.Lock()
	g.upConn.Close()
	g.mu.Unlock()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), `the MCP server "files" closed the connection before answering`) {
			t.Errorf("pending call = %v, want an error saying the server went away", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pending call never failed")
	}
	// The call reached the server, so it is spent, and its record says
	// what happened.
	page, err := g.stack.Audit.Query(context.Background(), audit.Filter{Tool: "fs.block"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Reason != `sent, then failed: the MCP server "files" closed the connection before answering` {
		t.Errorf("records of the call: %+v, %v", page.Records, err)
	}
	if st, err := g.stack.Budget.Usage(context.Background(), page.Records[0].Session); err != nil || st.Used.Calls != 1 {
		t.Errorf("calls counted after the server went away mid-call: %+v, %v; want 1", st.Used, err)
	}
	time.Sleep(1100 * time.Millisecond) // reconnects wait a second after a loss
	if res := g.call(t, "fs.read", "again"); res.IsError || text(res) != "echo: again" {
		t.Errorf("call after the server came back = %v %q", res.IsError, text(res))
	}
	if _, err := g.stack.Audit.Verify(context.Background()); err != nil {
		t.Error(err)
	}
}

// When the audit store starts failing, calls are denied with a clear
// reason and never reach the server; when it recovers, calls flow again,
// and the log verifies throughout.
func TestAuditStoreFailsMidSession(t *testing.T) {
	store := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	g := newGatewayWithAudit(t, 100, store)
	if res := g.call(t, "fs.read", "before"); res.IsError {
		t.Fatalf("call before the failure: %q", text(res))
	}
	store.Fail.Store(true)
	// The first call after the failure runs but can't be recorded, so its
	// result is withheld; the next is stopped before it runs.
	for i := range 2 {
		res := g.call(t, "fs.read", "during")
		if !res.IsError || !strings.Contains(text(res), "could not be recorded") && !strings.Contains(text(res), "audit log unavailable") {
			t.Errorf("call %d during the failure = %v %q, want an audit denial", i, res.IsError, text(res))
		}
	}
	if got := g.up.calls.Load(); got != 2 {
		t.Errorf("server saw %d calls, want 2: the one before, and the one whose record failed", got)
	}
	store.Fail.Store(false)
	g.call(t, "fs.read", "after") // recorded as a denial: the log was failed
	if res := g.call(t, "fs.read", "after"); res.IsError {
		t.Errorf("call after recovery = %q", text(res))
	}
	if _, err := g.stack.Audit.Verify(context.Background()); err != nil {
		t.Error(err)
	}
}

// A notification the client's side refuses is lost, but the session and
// the call it came during go on.
func TestUndeliverableNotificationKeepsTheSession(t *testing.T) {
	dropNotifications = true
	g := newGateway(t, 100)
	dropNotifications = false
	params := &mcp.CallToolParams{Name: "fs.slow", Arguments: map[string]any{"text": "x"}}
	params.SetProgressToken("tok")
	res, err := g.client.CallTool(context.Background(), params)
	if err != nil || res.IsError || text(res) != "done" {
		t.Fatalf("fs.slow = %+v, %v; want it done despite the refused progress", res, err)
	}
	if res := g.call(t, "fs.read", "still here"); res.IsError {
		t.Errorf("next call = %q", text(res))
	}
}

func TestTiktokenCounter(t *testing.T) {
	c := &mcpgate.TiktokenCounter{}
	res, _ := json.Marshal(map[string]any{"content": []map[string]string{{"type": "text", "text": "hello world"}}})
	n, err := c.CountResult(res)
	if err != nil || n != 2 {
		t.Errorf("CountResult(hello world) = %d, %v; want 2 tokens", n, err)
	}
	if _, err := c.CountResult([]byte(`[1,2]`)); err == nil {
		t.Error("CountResult of a non-result succeeded")
	}
}

// TestTiktokenCounterCountsEveryContentItem: what a client hands the
// model costs whatever the item's type — an embedded resource's text as a
// text, base64 data a token for every 4 characters, an item of a type
// MCP may add later its whole JSON — so a server can't pass a file's text
// uncounted as a resource.
func TestTiktokenCounterCountsEveryContentItem(t *testing.T) {
	c := &mcpgate.TiktokenCounter{}
	text := strings.Repeat("the quick brown fox jumps over the lazy dog ", 100)
	asText, err := c.CountResult([]byte(`{"content":[{"type":"text","text":"` + text + `"}]}`))
	if err != nil || asText < 900 {
		t.Fatalf("a text of 900 words costs %d, %v", asText, err)
	}
	blob := strings.Repeat("QUJD", 250) // 1,000 characters of base64
	for _, tc := range []struct {
		result string
		want   func(int64) bool
	}{
		{`{"content":[{"type":"resource","resource":{"uri":"file:///a","text":"` + text + `"}}]}`, func(n int64) bool { return n == asText }},
		{`{"content":[{"type":"resource","resource":{"uri":"file:///a","blob":"` + blob + `"}}]}`, func(n int64) bool { return n == 250 }},
		{`{"content":[{"type":"image","data":"` + blob + `","mimeType":"image/png"}]}`, func(n int64) bool { return n == 250 }},
		{`{"content":[{"type":"audio","data":"` + blob + `","mimeType":"audio/wav"}]}`, func(n int64) bool { return n == 250 }},
		{`{"content":[{"type":"future","words":"` + text + `"}]}`, func(n int64) bool { return n >= asText }},
		{`{"content":[{"TYPE":"resource","Resource":{"TEXT":"` + text + `"}}]}`, func(n int64) bool { return n == asText }}, // as Go's clients read it
		{`{"content":[{"type":"resource","resource":{"text":"","Text":"` + text + `"}}]}`, func(n int64) bool { return n == asText }},
		{`{"content":[{"text":"` + text + `"}]}`, func(n int64) bool { return n == 0 }}, // no type: no client shows it
	} {
		n, err := c.CountResult([]byte(tc.result))
		if err != nil || !tc.want(n) {
			t.Errorf("CountResult(%.80s…) = %d, %v", tc.result, n, err)
		}
	}
	for _, bad := range []string{`{"content":[{"type":"resource"}]}`, `{"content":[{"type":"resource","resource":{"text":1}}]}`, `{"content":[{"type":"image","data":1}]}`} {
		if _, err := c.CountResult([]byte(bad)); err == nil {
			t.Errorf("CountResult(%s) succeeded", bad)
		}
	}
}

// A result is counted as MCP clients read it: JavaScript's and Python's
// match keys exactly, Go's without regard to case, all take the last of
// a repeated key. A server must not hide a text from the count behind a
// key only one reading takes: such a result costs the more of the two.
func TestTiktokenCounterReadsKeysAsClientsDo(t *testing.T) {
	c := &mcpgate.TiktokenCounter{}
	hello, _ := c.CountResult([]byte(`{"content":[{"type":"text","text":"hello world"}]}`))
	for _, tc := range []struct {
		result string
		want   int64
	}{
		{`{"content":[{"type":"text","text":"hello world","TEXT":""}]}`, hello},
		{`{"content":[{"type":"text","Type":"image","text":"hello world"}]}`, hello},
		{`{"content":[{"type":"text","text":"hello world"}],"Content":[]}`, hello},
		{`{"content":[{"type":"text","text":""}],"structuredContent":{"a":1},"STRUCTUREDCONTENT":null}`, 5},
		{`{"content":[{"TYPE":"text","TEXT":"hello world"}]}`, hello},           // as Go's clients read it
		{`{"content":[{"type":"text","text":"","TEXT":"hello world"}]}`, hello}, // the same
		{`{"content":[{"type":"text","text":"hello world","Text":"hello world hello world"}]}`, 2 * hello},
		{`{"content":[{"type":"text","text":"x"},{"type":"text","text":"hello world"}],"content":[{"type":"text","text":"hello world"}]}`, hello},
		{`{"content":[null,{"type":"image","data":"AAAA"}]}`, 1},
		{`null`, 0},
	} {
		n, err := c.CountResult([]byte(tc.result))
		if err != nil || n != tc.want {
			t.Errorf("CountResult(%s) = %d, %v; want %d", tc.result, n, err, tc.want)
		}
	}
	for _, bad := range []string{`[1,2]`, `"x"`, `{"content":{}}`, `{"content":[{"type":1}]}`, `{"content":[{"type":"text","text":2}]}`, `{"content":["x"]}`} {
		if _, err := c.CountResult([]byte(bad)); err == nil {
			t.Errorf("CountResult(%s) succeeded", bad)
		}
	}
}
