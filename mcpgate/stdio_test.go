package mcpgate_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// stdioGateway runs a proxy on a stdio connection over pipes, in front of
// the test upstream, and returns the client's ends: a writer of lines and
// a reader of the gateway's.
func stdioGateway(t *testing.T, upstreams int, maxBytes int) (io.Writer, *bufio.Scanner) {
	t.Helper()
	in, out, _ := stdioGatewayWith(t, upstreams, maxBytes, []trust.Rule{{Tool: "*", Level: "public"}})
	return in, out
}

// stdioGatewayWith is stdioGateway with the given rules, also returning
// the first upstream.
func stdioGatewayWith(t *testing.T, upstreams int, maxBytes int, rules []trust.Rule) (io.Writer, *bufio.Scanner, *upstream) {
	t.Helper()
	stack := newStack(t, rules, []trust.Assignment{{Agent: "desktop", Level: "public"}}, 100, nil)
	var ups []mcpgate.Upstream
	var first *upstream
	for _, name := range []string{"files", "search"}[:upstreams] {
		u := newUpstream()
		if first == nil {
			first = u
		}
		ups = append(ups, mcpgate.Upstream{Name: name, Connect: u.connect})
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- (&mcpgate.Proxy{Stack: stack, Agent: "desktop", Upstreams: ups}).Serve(context.Background(), mcpgate.NewStdioConn(inR, outW, maxBytes))
	}()
	t.Cleanup(func() {
		inW.Close()
		outR.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return when stdin closed")
		}
	})
	sc := bufio.NewScanner(outR)
	sc.Buffer(nil, 1<<20)
	return inW, sc, first
}

// A tool name spelled twice — in another case, or as a duplicate key — is
// read as the server will read it: the gate checks the name the server
// runs, and the server gets no other spelling.
func TestToolNameIsReadAsTheServerReadsIt(t *testing.T) {
	in, out, up := stdioGatewayWith(t, 1, 0, []trust.Rule{{Tool: "fs.*", Level: "public"}, {Tool: "shell.exec", Level: "privileged"}})
	io.WriteString(in, initializeLine)
	readReply(t, out)
	io.WriteString(in, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n")
	for i, params := range []string{
		`{"name":"shell.exec","NAME":"fs.read","arguments":{"text":"x"}}`,
		`{"name":"shell.exec","Name":"fs.read","arguments":{"text":"x"}}`,
		`{"NAME":"fs.read","name":"shell.exec","arguments":{"text":"x"}}`,
	} {
		io.WriteString(in, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":%s}`+"\n", 10+i, params))
		r := readReply(t, out)
		if r.Error != nil || !strings.Contains(string(r.Result), "below the required level") {
			t.Errorf("params %s: %+v %s, want shell.exec denied", params, r, r.Result)
		}
	}
	if n := up.calls.Load(); n != 0 {
		t.Errorf("the server ran %d calls, want none", n)
	}
	// And the allowed spelling still works, with its stray variants gone.
	io.WriteString(in, `{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"fs.read","NAME":"shell.exec","arguments":{"text":"ok"}}}`+"\n")
	if r := readReply(t, out); r.Error != nil || !strings.Contains(string(r.Result), "echo: ok") {
		t.Errorf("fs.read: %+v %s", r, r.Result)
	}
}

type reply struct {
	ID     any             `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func readReply(t *testing.T, sc *bufio.Scanner) reply {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("no reply: %v", sc.Err())
	}
	var r reply
	if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
		t.Fatalf("reply %q is not JSON: %v", sc.Text(), err)
	}
	return r
}

const initializeLine = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}` + "\n"

// Bad input over stdio gets the proper JSON-RPC error, and the session
// goes on: a call after all of it still works.
func TestStdioBadInput(t *testing.T) {
	for _, upstreams := range []int{1, 2} {
		t.Run(map[int]string{1: "one upstream", 2: "two upstreams"}[upstreams], func(t *testing.T) {
			in, out := stdioGateway(t, upstreams, 1024)
			send := func(line string) { io.WriteString(in, line) }

			send(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"fs.read"}}` + "\n")
			if r := readReply(t, out); r.Error == nil || r.Error.Code != -32600 || !strings.Contains(r.Error.Message, "before initialize") || r.ID != 7.0 {
				t.Errorf("call before initialize: %+v", r)
			}
			send(initializeLine)
			if r := readReply(t, out); r.Error != nil || r.ID != 1.0 {
				t.Fatalf("initialize: %+v", r)
			}
			send(`{"jsonrpc":"2.0","method":"notifications/initialized"}` + "\n")

			for _, tc := range []struct {
				name, line string
				code       int64
				id         any
			}{
				{"not JSON", "{not json\n", -32700, nil},
				{"not JSON-RPC", `{"id":3,"method":"ping"}` + "\n", -32600, 3.0},
				{"batch", `[{"jsonrpc":"2.0","id":4,"method":"ping"}]` + "\n", -32600, nil},
				{"over the limit", `{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"` + strings.Repeat("a", 2000) + `"}}` + "\n", -32600, nil},
				{"unknown method", `{"jsonrpc":"2.0","id":6,"method":"no/such/method"}` + "\n", -32601, 6.0},
				{"call without a name", `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{}}` + "\n", -32602, 8.0},
			} {
				send(tc.line)
				r := readReply(t, out)
				if r.Error == nil || r.Error.Code != tc.code || r.ID != tc.id {
					t.Errorf("%s: reply %+v, want error %d for id %v", tc.name, r, tc.code, tc.id)
				}
			}
			tool := "fs.read"
			if upstreams == 2 {
				tool = "files__fs.read"
			}
			send(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"text":"still here"}}}` + "\n")
			r := readReply(t, out)
			if r.Error != nil || !strings.Contains(string(r.Result), "echo: still here") {
				t.Errorf("call after the bad input: %+v %s", r, r.Result)
			}
		})
	}
}

// The gateway's stdio connection is a real MCP transport: the SDK's own
// client works over it.
func TestStdioConnCarriesAnSDKSession(t *testing.T) {
	up := newUpstream()
	aR, aW := io.Pipe()
	bR, bW := io.Pipe()
	conn := mcpgate.NewStdioConn(aR, bW, 0)
	defer conn.Close()
	srv := up.server
	ctx := context.Background()
	ss, err := srv.Connect(ctx, connTransport{conn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.IOTransport{Reader: bR, Writer: aW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fs.read", Arguments: map[string]any{"text": "over stdio"}})
	if err != nil || text(res) != "echo: over stdio" {
		t.Errorf("call = %+v, %v", res, err)
	}
}

type connTransport struct{ conn mcp.Connection }

func (t connTransport) Connect(context.Context) (mcp.Connection, error) { return t.conn, nil }

// A second request with the id of one in progress is refused, and the
// first goes on: the client can still cancel it, and the server hears.
func TestDuplicateIDLeavesTheFirstRequest(t *testing.T) {
	in, out, up := stdioGatewayWith(t, 1, 0, []trust.Rule{{Tool: "*", Level: "public"}})
	io.WriteString(in, initializeLine)
	readReply(t, out)
	io.WriteString(in, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n")
	io.WriteString(in, `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"fs.block","arguments":{"text":"x"}}}`+"\n")
	for deadline := time.Now().Add(5 * time.Second); up.calls.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first call never reached the server")
		}
	}
	io.WriteString(in, `{"jsonrpc":"2.0","id":5,"method":"ping"}`+"\n")
	if r := readReply(t, out); r.ID != 5.0 || r.Error == nil || !strings.Contains(r.Error.Message, "already in progress") {
		t.Errorf("the second request with id 5: %+v", r)
	}
	io.WriteString(in, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}`+"\n")
	for deadline := time.Now().Add(5 * time.Second); up.stopped.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server never heard the first call was cancelled")
		}
	}
	io.WriteString(in, `{"jsonrpc":"2.0","id":6,"method":"ping"}`+"\n")
	if r := readReply(t, out); r.ID != 6.0 || r.Error != nil {
		t.Errorf("ping after the cancellation: %+v (a cancelled call gets no answer)", r)
	}
}

// TestUnreadAnswersBoundTheSession: a client that stops reading the
// gateway's stdout can't have it take requests without bound — each
// request counts against the session's 1,024 until its answer is written,
// not only until it is answered — so the gateway stops reading from it,
// and the answers it holds stay bounded.
func TestUnreadAnswersBoundTheSession(t *testing.T) {
	stack := newStack(t, []trust.Rule{{Tool: "*", Level: "public"}}, []trust.Assignment{{Agent: "desktop", Level: "public"}}, 1<<40, nil)
	up := newUpstream()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- (&mcpgate.Proxy{Stack: stack, Agent: "desktop", Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}}}).
			Serve(context.Background(), mcpgate.NewStdioConn(inR, outW, 0))
	}()
	defer func() { inW.Close(); outR.Close(); <-done }()
	io.WriteString(inW, initializeLine)
	bufio.NewScanner(outR).Scan() // the initialize answer; stdout is never read again
	io.WriteString(inW, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n")

	const sent = 1200
	var written atomic.Int64
	go func() {
		for i := range sent {
			if _, err := fmt.Fprintf(inW, `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"fs.read","arguments":{"text":"x"}}}`+"\n", 100+i); err != nil {
				return
			}
			written.Add(1)
		}
	}()
	// Wait for the session to fill — 1,024 calls run, their answers
	// unread — or for the writer to have sent every request; then give
	// the gateway a moment to take more, if it would.
	for deadline := time.Now().Add(30 * time.Second); up.calls.Load() < 1024 && written.Load() < sent; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the gateway ran %d calls of %d sent in 30 s", up.calls.Load(), written.Load())
		}
	}
	time.Sleep(500 * time.Millisecond)
	if n := up.calls.Load(); n > 1024 || written.Load() == sent {
		t.Errorf("with no answer read, the gateway took %d of %d requests and ran %d calls; the bound is 1,024", written.Load(), sent, n)
	}
}

// stallingConn is a stdio server that stops reading its stdin (a
// single-threaded server running a synchronous tool): once stalled, a
// write blocks, as a write to a full pipe does, until released — or
// until the connection is closed, as closing a pipe ends a write to it.
type stallingConn struct {
	mcp.Connection
	stalled   *atomic.Bool
	release   chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *stallingConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	if c.stalled.Load() {
		select {
		case <-c.release:
		case <-c.closed:
			return io.ErrClosedPipe
		}
	}
	return c.Connection.Write(ctx, msg)
}

func (c *stallingConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Connection.Close()
}

// stallingSession is a stdio session with an upstream of a timeout of
// 300 ms whose writes block once stalled is set, until the connection is
// closed (or 10 s pass, which a test that keeps the timeout never sees).
// The session is initialized, and a first call answered, so that the
// client's notification before it was written before any stall.
func stallingSession(t *testing.T) (in io.Writer, sc *bufio.Scanner, stalled *atomic.Bool) {
	stack := newStack(t, []trust.Rule{{Tool: "*", Level: "public"}}, []trust.Assignment{{Agent: "desktop", Level: "public"}}, 100, nil)
	up := newUpstream()
	stalled = new(atomic.Bool)
	release := make(chan struct{})
	unstall := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unstall)
	time.AfterFunc(10*time.Second, unstall) // bounds the wait, were the timeout not kept
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- (&mcpgate.Proxy{Stack: stack, Agent: "desktop", AllowUnlistedTools: true, Upstreams: []mcpgate.Upstream{{Name: "files", Timeout: 300 * time.Millisecond,
			Connect: func(ctx context.Context) (mcp.Connection, error) {
				c, err := up.connect(ctx)
				return &stallingConn{Connection: c, stalled: stalled, release: release, closed: make(chan struct{})}, err
			}}}}).Serve(context.Background(), mcpgate.NewStdioConn(inR, outW, 0))
	}()
	t.Cleanup(func() { inW.Close(); outR.Close(); <-done })
	sc = bufio.NewScanner(outR)
	sc.Buffer(nil, 1<<20)
	io.WriteString(inW, initializeLine)
	readReply(t, sc)
	io.WriteString(inW, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n")
	io.WriteString(inW, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fs.read","arguments":{"text":"first"}}}`+"\n")
	if r := readReply(t, sc); r.Error != nil {
		t.Fatalf("the first call: %+v", r.Error)
	}
	return inW, sc, stalled
}

// TestTimeoutWhileTheServerReadsNothing: a server that stops reading its
// stdin still gets its requests timed out — the connection is dropped,
// ending the blocked write — rather than holding the call (and the
// session behind it) for as long as it doesn't read: here it would be
// 10 s against a timeout of 300 ms. The session goes on.
func TestTimeoutWhileTheServerReadsNothing(t *testing.T) {
	in, sc, stalled := stallingSession(t)
	stalled.Store(true)
	start := time.Now()
	io.WriteString(in, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fs.read","arguments":{"text":"x"}}}`+"\n")
	r := readReply(t, sc)
	took := time.Since(start)
	if !strings.Contains(string(r.Result)+fmt.Sprint(r.Error), "did not answer in time") || took > 5*time.Second {
		t.Errorf("the answer after %v: %+v %s, want the timeout's", took.Round(10*time.Millisecond), r.Error, r.Result)
	}
	// A call once the server may be started again (a second after the
	// last start) starts it.
	stalled.Store(false)
	for id, deadline := 4, time.Now().Add(10*time.Second); ; id++ {
		fmt.Fprintf(in, `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"fs.read","arguments":{"text":"again"}}}`+"\n", id)
		r := readReply(t, sc)
		if r.Error == nil && strings.Contains(string(r.Result), "echo: again") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a call after the server was dropped: %+v %s, want its answer", r.Error, r.Result)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNotificationWhileTheServerReadsNothing: a client's notification,
// written to the server on the client's read loop, can't hold that loop
// past the upstream's timeout when the server reads nothing: the next
// request is answered (here, an error: the server was dropped) in
// seconds, not when the server reads again.
func TestNotificationWhileTheServerReadsNothing(t *testing.T) {
	in, sc, stalled := stallingSession(t)
	stalled.Store(true)
	start := time.Now()
	io.WriteString(in, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`+"\n")
	io.WriteString(in, `{"jsonrpc":"2.0","id":3,"method":"ping"}`+"\n")
	readReply(t, sc)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a ping behind a notification the server did not read was answered after %v", took.Round(100*time.Millisecond))
	}
}
