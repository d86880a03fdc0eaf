package mcpgate_test

import (
	"context"
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
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// server is one of the MCP servers behind a multi-upstream gateway.
type server struct {
	name      string
	srv       *mcp.Server
	calls     atomic.Int64
	cancelled chan struct{} // closed when a call to "hang" sees its context end

	mu   sync.Mutex
	conn mcp.Connection // the gateway's latest connection
}

// newServer makes an MCP server whose every answer names it: tools echo,
// secret, hang (never answers on its own), ask (samples the client's
// model), confirm (elicits), roots (lists the client's roots); a prompt
// "summarize"; a resource and a template; completions. Its page size is
// one, so every list pages.
func newServer(name string) *server {
	s := &server{name: name, cancelled: make(chan struct{})}
	var once sync.Once
	s.srv = mcp.NewServer(&mcp.Implementation{Name: name, Version: "1"}, &mcp.ServerOptions{
		Instructions: "use " + name + " for " + name,
		PageSize:     1,
		CompletionHandler: func(_ context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
			return &mcp.CompleteResult{Completion: mcp.CompletionResultDetails{
				Values: []string{name + ":" + req.Params.Ref.Name + req.Params.Ref.URI}}}, nil
		},
	})
	result := func(text string) *mcp.CallToolResult {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}
	}
	for _, tool := range []string{"echo", "secret"} {
		mcp.AddTool(s.srv, &mcp.Tool{Name: tool, Description: "echoes"},
			func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
				s.calls.Add(1)
				return result(name + " " + tool + ": " + in.Text), nil, nil
			})
	}
	mcp.AddTool(s.srv, &mcp.Tool{Name: "hang", Description: "never answers"},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ echoIn) (*mcp.CallToolResult, any, error) {
			s.calls.Add(1)
			<-ctx.Done()
			once.Do(func() { close(s.cancelled) })
			return nil, nil, ctx.Err()
		})
	mcp.AddTool(s.srv, &mcp.Tool{Name: "ask", Description: "samples the client's model"},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.CreateMessage(ctx, &mcp.CreateMessageParams{MaxTokens: 10,
				Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: in.Text}}}})
			if err != nil {
				return nil, nil, err
			}
			return result(name + " heard: " + res.Content.(*mcp.TextContent).Text), nil, nil
		})
	mcp.AddTool(s.srv, &mcp.Tool{Name: "confirm", Description: "elicits"},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.Elicit(ctx, &mcp.ElicitParams{Message: in.Text,
				RequestedSchema: map[string]any{"type": "object", "properties": map[string]any{"ok": map[string]any{"type": "boolean"}}}})
			if err != nil {
				return nil, nil, err
			}
			return result(name + " got: " + res.Action), nil, nil
		})
	mcp.AddTool(s.srv, &mcp.Tool{Name: "roots", Description: "lists the client's roots"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ echoIn) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.ListRoots(ctx, nil)
			if err != nil {
				return nil, nil, err
			}
			return result(name + " roots: " + res.Roots[0].URI), nil, nil
		})
	s.srv.AddPrompt(&mcp.Prompt{Name: "summarize", Arguments: []*mcp.PromptArgument{{Name: "topic"}}},
		func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Description: "from " + name,
				Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: name}}}}, nil
		})
	uri := name + "://index"
	s.srv.AddResource(&mcp.Resource{URI: uri, Name: "index"},
		func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, Text: name + " index"}}}, nil
		})
	s.srv.AddResourceTemplate(&mcp.ResourceTemplate{URITemplate: name + "://logs/{day}", Name: "logs"},
		func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: name + " log"}}}, nil
		})
	return s
}

func (s *server) connect(ctx context.Context) (mcp.Connection, error) {
	serverSide, gatewaySide := mcp.NewInMemoryTransports()
	if _, err := s.srv.Connect(ctx, serverSide, nil); err != nil {
		return nil, err
	}
	conn, err := gatewaySide.Connect(ctx)
	if err == nil {
		s.mu.Lock()
		s.conn = conn
		s.mu.Unlock()
	}
	return conn, err
}

type multi struct {
	stack           *agentsec.Stack
	files, search   *server
	client          *mcp.ClientSession
	sampled, elicit atomic.Int64
}

// newMulti connects an SDK client, speaking protocolVersion ("" for the
// SDK's latest), through a proxy to the servers "files" and "search".
func newMulti(t *testing.T, protocolVersion string, timeout time.Duration) *multi {
	t.Helper()
	ctx := context.Background()
	stack := newStack(t, []trust.Rule{{Tool: "files__*", Level: "public"}, {Tool: "search__*", Level: "public"},
		{Tool: "*__secret", Level: "privileged"}, {Tool: "ghost__*", Level: "public"}}, []trust.Assignment{{Agent: "desktop", Level: "verified"}}, 100, nil)
	m := &multi{stack: stack, files: newServer("files"), search: newServer("search")}
	proxyDown, clientSide := mcp.NewInMemoryTransports()
	down, err := proxyDown.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &mcpgate.Proxy{Stack: stack, Agent: "desktop", Upstreams: []mcpgate.Upstream{
		{Name: "files", Connect: m.files.connect, Timeout: timeout},
		{Name: "search", Connect: m.search.connect, Timeout: timeout},
	}}
	done := make(chan error, 1)
	go func() { done <- proxy.Serve(ctx, down) }()
	client := mcp.NewClient(&mcp.Implementation{Name: "client", Version: "1"}, &mcp.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			m.sampled.Add(1)
			return &mcp.CreateMessageResult{Model: "m", Role: "assistant",
				Content: &mcp.TextContent{Text: "model says " + req.Params.Messages[0].Content.(*mcp.TextContent).Text}}, nil
		},
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			m.elicit.Add(1)
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"ok": true}}, nil
		},
	})
	client.AddRoots(&mcp.Root{URI: "file:///work", Name: "work"})
	var opts *mcp.ClientSessionOptions
	if protocolVersion != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: protocolVersion}
	}
	if m.client, err = client.Connect(ctx, clientSide, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.client.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after the client closed")
		}
	})
	return m
}

func (m *multi) call(t *testing.T, tool, text string) (*mcp.CallToolResult, error) {
	t.Helper()
	return m.client.CallTool(context.Background(), &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"text": text}})
}

func TestSeveralUpstreamsIntroduceThemselvesAsOne(t *testing.T) {
	for _, version := range []string{"2025-11-25", ""} {
		t.Run("protocol "+version, func(t *testing.T) {
			m := newMulti(t, version, 0)
			init := m.client.InitializeResult()
			if init.ServerInfo == nil || init.ServerInfo.Name != "agentsec" {
				t.Errorf("serverInfo = %+v, want the gateway's", init.ServerInfo)
			}
			c := init.Capabilities
			if c == nil || c.Tools == nil || c.Prompts == nil || c.Resources == nil || c.Completions == nil {
				t.Errorf("capabilities = %+v, want tools, prompts, resources and completions", c)
			}
			for _, want := range []string{"files__", "use files for files", "search__", "use search for search"} {
				if !strings.Contains(init.Instructions, want) {
					t.Errorf("instructions %q lack %q", init.Instructions, want)
				}
			}
		})
	}
}

func TestSeveralUpstreamsListEveryPageOfEach(t *testing.T) {
	m := newMulti(t, "2025-11-25", 0)
	ctx := context.Background()
	var tools []string
	for tool, err := range m.client.Tools(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		tools = append(tools, tool.Name)
	}
	slices.Sort(tools)
	want := []string{"files__ask", "files__confirm", "files__echo", "files__hang", "files__roots",
		"search__ask", "search__confirm", "search__echo", "search__hang", "search__roots"}
	if !slices.Equal(tools, want) {
		t.Errorf("tools = %v,\nwant %v (prefixed, every page, secret hidden)", tools, want)
	}
	// A client that never follows nextCursor still sees every upstream:
	// the first page holds each one's first.
	first, err := m.client.ListTools(ctx, nil)
	if err != nil || len(first.Tools) != 2 || first.Tools[0].Name != "files__ask" || first.Tools[1].Name != "search__ask" || first.NextCursor == "" {
		t.Errorf("first page = %+v, %v; want files__ask and search__ask, and more to come", first, err)
	}
	var prompts []string
	for p, err := range m.client.Prompts(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		prompts = append(prompts, p.Name)
	}
	slices.Sort(prompts)
	if !slices.Equal(prompts, []string{"files__summarize", "search__summarize"}) {
		t.Errorf("prompts = %v", prompts)
	}
	var resources []string
	for r, err := range m.client.Resources(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		resources = append(resources, r.URI)
	}
	slices.Sort(resources)
	if !slices.Equal(resources, []string{"files://index", "search://index"}) {
		t.Errorf("resources = %v, want each upstream's, URIs unchanged", resources)
	}
	var templates []string
	for r, err := range m.client.ResourceTemplates(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		templates = append(templates, r.URITemplate)
	}
	slices.Sort(templates)
	if !slices.Equal(templates, []string{"files://logs/{day}", "search://logs/{day}"}) {
		t.Errorf("templates = %v", templates)
	}
	if _, err := m.client.ListTools(ctx, &mcp.ListToolsParams{Cursor: "not-ours"}); err == nil || !strings.Contains(err.Error(), "invalid cursor") {
		t.Errorf("a forged cursor: %v, want an invalid-cursor error", err)
	}
}

func TestSeveralUpstreamsRouteEachRequest(t *testing.T) {
	m := newMulti(t, "2025-11-25", 0)
	ctx := context.Background()
	for _, tc := range []struct{ tool, want string }{
		{"files__echo", "files echo: hi"},
		{"search__echo", "search echo: hi"},
	} {
		res, err := m.call(t, tc.tool, "hi")
		if err != nil || res.IsError || text(res) != tc.want {
			t.Errorf("%s = %+v, %v; want %q", tc.tool, res, err, tc.want)
		}
	}
	if res, err := m.call(t, "search__secret", "x"); err != nil || !res.IsError || !strings.Contains(text(res), "below the required level") {
		t.Errorf("search__secret = %+v, %v; want a trust denial", res, err)
	}
	if res, err := m.call(t, "echo", "x"); err != nil || !res.IsError || !strings.Contains(text(res), "no trust rule covers") {
		t.Errorf("unprefixed echo = %+v, %v; want a denial", res, err)
	}
	if _, err := m.call(t, "ghost__echo", "x"); err == nil || !strings.Contains(err.Error(), `no upstream serves the tool "ghost__echo"`) {
		t.Errorf("ghost__echo: %v, want an error naming the missing upstream", err)
	}
	if m.files.calls.Load() != 1 || m.search.calls.Load() != 1 {
		t.Errorf("calls reached files %d and search %d times, want once each", m.files.calls.Load(), m.search.calls.Load())
	}

	p, err := m.client.GetPrompt(ctx, &mcp.GetPromptParams{Name: "search__summarize"})
	if err != nil || p.Description != "from search" {
		t.Errorf("search__summarize = %+v, %v", p, err)
	}
	for uri, want := range map[string]string{"files://index": "files index", "search://index": "search index",
		"search://logs/monday": "search log", "files://logs/monday": "files log"} {
		res, err := m.client.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri})
		if err != nil || len(res.Contents) != 1 || res.Contents[0].Text != want {
			t.Errorf("read %s = %+v, %v; want %q", uri, res, err, want)
		}
	}
	if _, err := m.client.ReadResource(ctx, &mcp.ReadResourceParams{URI: "nowhere://x"}); err == nil {
		t.Error("reading a resource nobody has succeeded")
	}
	c, err := m.client.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "files__summarize"},
		Argument: mcp.CompleteParamsArgument{Name: "topic", Value: "x"}})
	if err != nil || !slices.Equal(c.Completion.Values, []string{"files:summarize"}) {
		t.Errorf("completion of files__summarize = %+v, %v; want the files server's, for its own prompt name", c, err)
	}
	if err := m.client.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Errorf("logging/setLevel: %v", err)
	}
	if err := m.client.Ping(ctx, nil); err != nil {
		t.Errorf("ping: %v", err)
	}
	page, err := m.stack.Audit.Query(ctx, audit.Filter{Event: agentsec.EventToolCall})
	if err != nil || len(page.Records) != 5 || page.Records[0].Tool != "files__echo" {
		t.Errorf("records = %+v, %v; want the five calls under the names the agent used", page.Records, err)
	}
}

// Requests the servers make of the client during a call — sampling,
// elicitation, roots — reach the client and their answers come back, each
// to the server that asked.
func TestSeveralUpstreamsAskTheClient(t *testing.T) {
	m := newMulti(t, "2025-11-25", 0)
	for _, tc := range []struct{ tool, want string }{
		{"files__ask", "files heard: model says hello"},
		{"search__ask", "search heard: model says hello"},
		{"search__confirm", "search got: accept"},
		{"files__roots", "files roots: file:///work"},
	} {
		res, err := m.call(t, tc.tool, "hello")
		if err != nil || res.IsError || text(res) != tc.want {
			t.Errorf("%s = %+v, %v; want %q", tc.tool, res, err, tc.want)
		}
	}
	if m.sampled.Load() != 2 || m.elicit.Load() != 1 {
		t.Errorf("the client sampled %d and elicited %d times, want 2 and 1", m.sampled.Load(), m.elicit.Load())
	}
}

// One upstream going away leaves the other's tools usable, and calls to it
// fail clearly; a hanging upstream times out with a clear error; a call
// the client cancels is cancelled at the server.
func TestSeveralUpstreamsSurviveFailures(t *testing.T) {
	m := newMulti(t, "2025-11-25", time.Second)
	ctx := context.Background()

	_, err := m.call(t, "files__hang", "x")
	if err == nil || !strings.Contains(err.Error(), `the MCP server "files" did not answer in time (1s)`) {
		t.Errorf("files__hang = %v, want a timeout naming the server", err)
	}
	select {
	case <-m.files.cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the server was not told the timed-out call was cancelled")
	}

	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		res, err := m.client.CallTool(cctx, &mcp.CallToolParams{Name: "search__hang", Arguments: map[string]any{"text": "x"}})
		if err == nil {
			err = errors.New("a result: " + text(res))
		}
		errc <- err
	}()
	for m.search.calls.Load() == 0 {
		select {
		case err := <-errc:
			t.Fatalf("search__hang returned before it was cancelled: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled call = %v", err)
	}
	select {
	case <-m.search.cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the server never saw the client's cancellation")
	}

	m.files.mu.Lock()
	m.files.conn.Close()
	m.files.mu.Unlock()
	var names []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		// Listing while files is down skips it; once reconnected, its
		// tools are back.
		names = names[:0]
		for tool, err := range m.client.Tools(ctx, nil) {
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, tool.Name)
		}
		if slices.Contains(names, "files__echo") {
			break
		}
		if !slices.Contains(names, "search__echo") {
			t.Fatalf("tools while files is down = %v, want search's still listed", names)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if res, err := m.call(t, "files__echo", "back"); err != nil || text(res) != "files echo: back" {
		t.Errorf("files__echo after files came back = %+v, %v", res, err)
	}
	if res, err := m.call(t, "search__echo", "still"); err != nil || text(res) != "search echo: still" {
		t.Errorf("search__echo = %+v, %v", res, err)
	}
	if _, err := m.stack.Audit.Verify(ctx); err != nil {
		t.Error(err)
	}
}

func TestSeveralUpstreamsRefuseWhatTheyCantRoute(t *testing.T) {
	m := newMulti(t, "2025-11-25", 0)
	var werr *jsonrpc.Error
	_, err := m.client.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: "summarize"})
	if !errors.As(err, &werr) || werr.Code != jsonrpc.CodeInvalidParams || !strings.Contains(werr.Message, "no upstream serves the prompt") {
		t.Errorf("unprefixed prompt: %v", err)
	}
}
