package mcpgate_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// memorySessions is a SessionStore in memory, which can be made to fail.
type memorySessions struct {
	mu       sync.Mutex
	sessions map[string]*memorySession
	failing  atomic.Bool
}

type memorySession struct {
	agent, init string
	lastActive  time.Time
}

var errSessionsDown = errors.New("session store down")

func (m *memorySessions) SaveSession(_ context.Context, id, agent string, init []byte) error {
	if m.failing.Load() {
		return errSessionsDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sessions == nil {
		m.sessions = map[string]*memorySession{}
	}
	m.sessions[id] = &memorySession{agent, string(init), time.Now()}
	return nil
}

func (m *memorySessions) live(id string, idle time.Duration) *memorySession {
	if s := m.sessions[id]; s != nil && time.Since(s.lastActive) < idle {
		return s
	}
	return nil
}

func (m *memorySessions) LoadSession(_ context.Context, id string, idle time.Duration) (string, []byte, bool, error) {
	if m.failing.Load() {
		return "", nil, false, errSessionsDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.live(id, idle); s != nil {
		return s.agent, []byte(s.init), true, nil
	}
	return "", nil, false, nil
}

func (m *memorySessions) RefreshSessions(_ context.Context, held, used []string, idle time.Duration) ([]string, error) {
	if m.failing.Load() {
		return nil, errSessionsDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range used {
		if s := m.live(id, idle); s != nil {
			s.lastActive = time.Now()
		}
	}
	var gone []string
	for _, id := range held {
		if m.live(id, idle) == nil {
			gone = append(gone, id)
		}
	}
	return gone, nil
}

func (m *memorySessions) DeleteSession(_ context.Context, id string) error {
	if m.failing.Load() {
		return errSessionsDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sessions, id)
	return nil
}

func (m *memorySessions) PruneSessions(_ context.Context, idle time.Duration) error {
	if m.failing.Load() {
		return errSessionsDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.sessions {
		if m.live(id, idle) == nil {
			delete(m.sessions, id)
		}
	}
	return nil
}

// roundRobin sends each request to the next of several servers, as a load
// balancer without session affinity does.
type roundRobin struct {
	targets []*url.URL
	next    atomic.Int64
	token   string
}

func (rr *roundRobin) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	t := rr.targets[int(rr.next.Add(1)-1)%len(rr.targets)]
	r.URL.Scheme, r.URL.Host, r.Host = t.Scheme, t.Host, t.Host
	r.Header.Set("Authorization", "Bearer "+rr.token)
	return http.DefaultTransport.RoundTrip(r)
}

// replicas starts n gateways sharing one stack (so one budget and one log)
// and one session store, each with its own connections upstream.
func replicas(t *testing.T, n int, calls int64) ([]*httptest.Server, *agentsec.Stack, *upstream, *memorySessions) {
	t.Helper()
	return replicasIdle(t, n, calls, 0)
}

// replicasIdle is replicas with the gateways' IdleTimeout.
func replicasIdle(t *testing.T, n int, calls int64, idle time.Duration) ([]*httptest.Server, *agentsec.Stack, *upstream, *memorySessions) {
	t.Helper()
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}}, []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "bob", Level: "verified"}}, calls, nil)
	up := newUpstream()
	sessions := &memorySessions{}
	var srvs []*httptest.Server
	for range n {
		gw := &mcpgate.Gateway{Stack: stack, Sessions: sessions, IdleTimeout: idle,
			Agents: []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"},
				{TokenSHA256: sha256.Sum256([]byte("bob-token")), Agent: "bob"}},
			Upstreams: []mcpgate.Upstream{{Name: "files", Connect: up.connect}}}
		srv := httptest.NewServer(gw)
		t.Cleanup(func() { gw.Close(); srv.Close() })
		srvs = append(srvs, srv)
	}
	return srvs, stack, up, sessions
}

func spread(srvs []*httptest.Server, token string) *roundRobin {
	rr := &roundRobin{token: token}
	for _, s := range srvs {
		u, _ := url.Parse(s.URL)
		rr.targets = append(rr.targets, u)
	}
	return rr
}

// openAs connects an SDK client to the gateway at url with token, and
// closes it when the test ends.
func openAs(t *testing.T, url, token string) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url,
		HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func TestReplicasServeOneSession(t *testing.T) {
	const limit = 5
	srvs, stack, up, _ := replicas(t, 3, limit)
	ctx := context.Background()
	client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: srvs[0].URL,
		HTTPClient: &http.Client{Transport: spread(srvs, "alice-token")}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	// Every request goes to the next replica; the session and its budget
	// hold across all three.
	allowed := 0
	for i := range limit + 3 {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fs.read", Arguments: map[string]any{"text": "x"}})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !res.IsError {
			allowed++
		} else if !strings.Contains(text(res), "call limit") {
			t.Errorf("call %d denied with %q, want the call limit", i, text(res))
		}
	}
	if allowed != limit || up.calls.Load() != limit {
		t.Errorf("%d calls allowed and %d reached the server, want %d", allowed, up.calls.Load(), limit)
	}
	if _, err := cs.ListTools(ctx, nil); err != nil {
		t.Errorf("tools/list on a replica that took the session up: %v", err)
	}
	page, err := stack.Audit.Query(ctx, audit.Filter{Session: cs.ID(), Outcome: audit.OutcomeAllowed})
	if err != nil || len(page.Records) != limit {
		t.Errorf("allowed records of the session: %d, %v; want %d", len(page.Records), err, limit)
	}
	// Each replica connected upstream for the session once.
	if n := up.connects.Load(); n != 3 {
		t.Errorf("the server saw %d connections, want one per replica (3)", n)
	}
}

// Taking a session up is not an upstream restart: the first call on
// another replica is answered plainly, with no list_changed notifications
// ahead of it. A DELETE through a replica that doesn't hold the session
// starts nothing there.
func TestReplicasTakeUpQuietly(t *testing.T) {
	srvs, _, up, _ := replicas(t, 3, 100)
	cs := openAs(t, srvs[0].URL, "alice-token")
	headers := map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": cs.ID()}
	resp := doMCP(t, "POST", srvs[1].URL, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"fs.read","arguments":{"text":"x"}}}`, headers)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/json" || strings.Contains(string(body), "list_changed") {
		t.Errorf("a call taken up on replica 1: %d, %s: %s; want 200 application/json with the result alone", resp.StatusCode, ct, body)
	}

	resp = doMCP(t, "DELETE", srvs[2].URL, "", map[string]string{"Authorization": "Bearer bob-token", "Mcp-Session-Id": cs.ID()})
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE of alice's session by bob: %d, want 404", resp.StatusCode)
	}
	before := up.connects.Load()
	resp = doMCP(t, "DELETE", srvs[2].URL, "", headers)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE through replica 2: %d", resp.StatusCode)
	}
	time.Sleep(100 * time.Millisecond)
	if n := up.connects.Load() - before; n != 0 {
		t.Errorf("DELETE through a replica that doesn't hold the session connected to the upstream %d times, want 0", n)
	}
	if code := postMCP(t, srvs[2].URL, `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`, headers); code != http.StatusNotFound {
		t.Errorf("the deleted session on replica 2: %d, want 404", code)
	}
	resp = doMCP(t, "DELETE", srvs[2].URL, "", headers)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE of a session that is gone: %d, want 404", resp.StatusCode)
	}
}

func TestReplicasKeepSessionsApart(t *testing.T) {
	srvs, _, _, sessions := replicas(t, 2, 5)
	ctx := context.Background()
	cs := openAs(t, srvs[0].URL, "alice-token")
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`
	// Another agent can't take alice's session up on another replica.
	if code := postMCP(t, srvs[1].URL, call, map[string]string{"Authorization": "Bearer bob-token", "Mcp-Session-Id": cs.ID()}); code != http.StatusNotFound {
		t.Errorf("bob with alice's session on the other replica: %d, want 404", code)
	}
	// Nor can anyone take up a session that doesn't exist.
	if code := postMCP(t, srvs[1].URL, call, map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": "no-such-session"}); code != http.StatusNotFound {
		t.Errorf("an unknown session: %d, want 404", code)
	}
	// While the session store is down, a replica that doesn't hold the
	// session says so, and the one that does goes on serving it.
	sessions.failing.Store(true)
	if code := postMCP(t, srvs[1].URL, call, map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": cs.ID()}); code != http.StatusServiceUnavailable {
		t.Errorf("taking a session up with the store down: %d, want 503", code)
	}
	if _, err := cs.ListTools(ctx, nil); err != nil {
		t.Errorf("the replica holding the session, with the store down: %v", err)
	}
	// A session that can't be recorded isn't begun.
	other := mcp.NewClient(&mcp.Implementation{Name: "c2", Version: "1"}, nil)
	if cs2, err := other.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: srvs[1].URL,
		HTTPClient: &http.Client{Transport: bearer{"alice-token", http.DefaultTransport}}, MaxRetries: -1}, nil); err == nil {
		cs2.Close()
		t.Error("initialize succeeded with the session store down")
	} else if !strings.Contains(err.Error(), "could not be recorded") {
		t.Errorf("initialize with the session store down: %v, want it to say the session could not be recorded", err)
	}
	sessions.failing.Store(false)

	// A session ended on one replica can't be taken up on another.
	resp := doMCP(t, "DELETE", srvs[0].URL, "", map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": cs.ID()})
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	if code := postMCP(t, srvs[1].URL, call, map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": cs.ID()}); code != http.StatusNotFound {
		t.Errorf("a deleted session on another replica: %d, want 404", code)
	}
}

// A session ends on every replica: when its client deletes it through
// one, the others that hold it learn so; when it is idle everywhere, no
// replica takes it up; while it is used anywhere, it stays.
func TestReplicasEndSessionsEverywhere(t *testing.T) {
	const idle = time.Second // replicas refresh sessions every 250 ms
	srvs, _, up, sessions := replicasIdle(t, 3, 100, idle)
	ctx := context.Background()
	open := func() *mcp.ClientSession { return openAs(t, srvs[0].URL, "alice-token") }
	list := func(srv *httptest.Server, id string) int {
		return postMCP(t, srv.URL, `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`,
			map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": id})
	}

	// Deleted through one replica, gone from another that held it.
	deleted := open()
	if code := list(srvs[1], deleted.ID()); code != http.StatusOK {
		t.Fatalf("taking the session up on replica 1: %d", code)
	}
	resp := doMCP(t, "DELETE", srvs[0].URL, "", map[string]string{"Authorization": "Bearer alice-token", "Mcp-Session-Id": deleted.ID()})
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	// Replica 1 learns of it at its next refresh (every 250 ms), or the
	// one after on a loaded machine.
	for deadline := time.Now().Add(2 * idle); ; time.Sleep(idle / 10) {
		code := list(srvs[1], deleted.ID())
		if code == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("a session deleted through replica 0, on replica 1 that held it: %d, want 404", code)
			break
		}
	}

	// Used through one replica the whole time, alive on another.
	used := open()
	for range 6 {
		time.Sleep(idle / 4)
		if code := list(srvs[0], used.ID()); code != http.StatusOK {
			t.Fatalf("using the session on replica 0: %d", code)
		}
	}
	if code := list(srvs[2], used.ID()); code != http.StatusOK {
		t.Errorf("a session in use for longer than the idle timeout, taken up on replica 2: %d, want 200", code)
	}

	// Busy on one replica, with a call running for longer than the idle
	// timeout: alive there, and on another.
	busy := open()
	called := make(chan error, 1)
	go func() {
		_, err := busy.CallTool(ctx, &mcp.CallToolParams{Name: "fs.block", Arguments: map[string]any{"text": "x"}})
		called <- err
	}()
	time.Sleep(idle * 2)
	if code := list(srvs[0], busy.ID()); code != http.StatusOK {
		t.Errorf("a session with a call running for twice the idle timeout, on its replica: %d, want 200", code)
	}
	if code := list(srvs[1], busy.ID()); code != http.StatusOK {
		t.Errorf("the same session, taken up on replica 1: %d, want 200", code)
	}
	close(up.release)
	if err := <-called; err != nil {
		t.Errorf("the long call: %v", err)
	}

	// Idle everywhere: taken up nowhere, and its row pruned. (The SDK's
	// client holds a GET stream open, which keeps its session busy: this
	// session is a client's that opens none.)
	resp = doMCP(t, "POST", srvs[0].URL, initializeBody, map[string]string{"Authorization": "Bearer alice-token"})
	resp.Body.Close()
	idled := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || idled == "" {
		t.Fatalf("initialize: %d, session %q", resp.StatusCode, idled)
	}
	// Ended by the first refresh after the idle timeout, 250 ms at most
	// on an idle machine: twice the timeout leaves room for a late one.
	time.Sleep(idle * 2)
	for i, srv := range srvs {
		if code := list(srv, idled); code != http.StatusNotFound {
			t.Errorf("an idle session on replica %d: %d, want 404", i, code)
		}
	}
	time.Sleep(idle)
	sessions.mu.Lock()
	_, kept := sessions.sessions[idled]
	sessions.mu.Unlock()
	if kept {
		t.Error("the idle session's row is still in the store")
	}
}

// TestInitializeOutlastsARefresh: a session whose initialize is under way
// is not yet in the session store, and a replica's refresh must not take
// it for one another replica ended: with an upstream whose start takes
// 600 ms and a refresh every 250 ms (IdleTimeout 1 s), every initialize
// succeeds.
func TestInitializeOutlastsARefresh(t *testing.T) {
	stack := newStack(t, []trust.Rule{{Tool: "fs.*", Level: "public"}}, []trust.Assignment{{Agent: "alice", Level: "verified"}}, 100, nil)
	up := newUpstream()
	slow := func(ctx context.Context) (mcp.Connection, error) {
		time.Sleep(600 * time.Millisecond)
		return up.connect(ctx)
	}
	gw := &mcpgate.Gateway{Stack: stack, Sessions: &memorySessions{}, IdleTimeout: time.Second,
		Agents:    []mcpgate.Credential{{TokenSHA256: sha256.Sum256([]byte("alice-token")), Agent: "alice"}},
		Upstreams: []mcpgate.Upstream{{Name: "files", Connect: slow}}}
	srv := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); srv.Close() })
	for i := range 3 {
		resp := doMCP(t, "POST", srv.URL, initializeBody, map[string]string{"Authorization": "Bearer alice-token"})
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("initialize %d: %d, session %q", i, resp.StatusCode, resp.Header.Get("Mcp-Session-Id"))
		}
	}
}
