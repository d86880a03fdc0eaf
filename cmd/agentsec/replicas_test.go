package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/pgtest"
	"github.com/agentsec/agentsec/store/postgres"
)

// A fleet is several "agentsec serve" processes sharing one PostgreSQL
// database, in front of one MCP server over HTTP, as a load balancer's
// replicas would be.
type fleet struct {
	t        *testing.T
	pg       *pgtest.Server
	dsn, dir string
	config   string
	upstream *countingServer

	mu       sync.Mutex
	replicas []*replica

	logMu  sync.Mutex
	logged []string // what the replicas wrote to stderr, shown if the test fails
}

type replica struct {
	cmd      *exec.Cmd
	endpoint *url.URL
	exited   chan struct{}
}

const (
	fleetToken         = "ags_fleet-token"
	fleetOperatorToken = "ags_fleet-operator-token"
)

// newFleet starts a PostgreSQL server of the test's own (so the test can
// stop it), creates the schema with agentsec migrate, and starts n
// replicas, each session limited to calls calls.
func newFleet(t *testing.T, n int, calls int64) *fleet {
	t.Helper()
	if _, err := exec.LookPath("agentsec"); err != nil {
		t.Fatalf("the test binary's agentsec command is not on PATH: %v", err)
	}
	pg, err := pgtest.Start()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no PostgreSQL: %v", err)
		}
		t.Skipf("no PostgreSQL for this test: %v (install Debian's postgresql package)", err)
	}
	t.Cleanup(pg.Stop)
	f := &fleet{t: t, pg: pg, dir: t.TempDir(), upstream: newCountingServer(t)}
	t.Cleanup(func() {
		f.logMu.Lock()
		defer f.logMu.Unlock()
		if t.Failed() || testing.Verbose() {
			for _, line := range f.logged[max(0, len(f.logged)-100):] {
				t.Log("replica:", line)
			}
		}
	})
	f.dsn = pg.NewDB(t)
	skey, vkey, err := audit.GenerateKey("fleet")
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]string{"fleet.key": skey, "fleet.pub": vkey} {
		if err := os.WriteFile(filepath.Join(f.dir, name), []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.config = filepath.Join(f.dir, "agentsec.yaml")
	cfg := fmt.Sprintf(`namespace: fleet
trust:
  rules: [{tool: read, level: public}]
  agents: [{id: bot, level: public, token_sha256: %x}]
budget: {tokens: 1000000000, calls: %d}
audit: {key_file: fleet.key, checkpoint_every: 100}
postgres: {url: %q}
listen: 127.0.0.1:0
max_sessions: 100000
upstreams: [{name: count, url: %q}]
operators: [{id: ops, role: admin, token_sha256: %x}]
`, sha256.Sum256([]byte(fleetToken)), calls, f.dsn, f.upstream.URL, sha256.Sum256([]byte(fleetOperatorToken)))
	if err := os.WriteFile(f.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("agentsec", "migrate", "-config", f.config).CombinedOutput(); err != nil {
		t.Fatalf("agentsec migrate: %v\n%s", err, out)
	}
	for range n {
		f.replicas = append(f.replicas, f.start())
	}
	t.Cleanup(f.stop)
	return f
}

// start starts one replica and waits until it serves.
func (f *fleet) start() *replica {
	f.t.Helper()
	cmd := exec.Command("agentsec", "serve", "-config", f.config)
	cmd.Dir = f.dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	r := &replica{cmd: cmd, exited: make(chan struct{})}
	found := make(chan string, 1)
	go func() {
		addr := regexp.MustCompile(`serving MCP on (http://\S+)`)
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			if m := addr.FindStringSubmatch(lines.Text()); m != nil {
				found <- m[1]
			} else if !strings.Contains(lines.Text(), "ending a session ended through another replica") {
				f.logMu.Lock()
				f.logged = append(f.logged, lines.Text())
				f.logMu.Unlock()
			}
		}
		cmd.Wait()
		close(r.exited)
	}()
	select {
	case u := <-found:
		r.endpoint, _ = url.Parse(u)
	case <-r.exited:
		f.t.Fatal("a replica exited before serving")
	case <-time.After(30 * time.Second):
		f.t.Fatal("a replica did not start serving")
	}
	return r
}

// stop interrupts every replica still running, as an operator would, and
// waits for each to exit.
func (f *fleet) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.replicas {
		r.cmd.Process.Signal(os.Interrupt)
	}
	for _, r := range f.replicas {
		select {
		case <-r.exited:
		case <-time.After(15 * time.Second):
			r.cmd.Process.Kill()
			<-r.exited
		}
	}
}

// endpoints returns the replicas' URLs.
func (f *fleet) endpoints() []*url.URL {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*url.URL
	for _, r := range f.replicas {
		out = append(out, r.endpoint)
	}
	return out
}

// balancer sends each request to the next replica, and on to the one after
// if a replica can't be reached, as a load balancer without session
// affinity does.
type balancer struct {
	f    *fleet
	next atomic.Int64
}

func (b *balancer) RoundTrip(r *http.Request) (*http.Response, error) {
	targets := b.f.endpoints()
	start := int(b.next.Add(1))
	var lastErr error
	for i := range targets {
		t := targets[(start+i)%len(targets)]
		req := r.Clone(r.Context())
		if r.GetBody != nil {
			req.Body, _ = r.GetBody()
		}
		req.URL.Scheme, req.URL.Host, req.Host = t.Scheme, t.Host, t.Host
		req.Header.Set("Authorization", "Bearer "+fleetToken)
		resp, err := fleetTransport.RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
	}
	return nil, lastErr
}

// fleetTransport keeps as many connections as the test's callers use at
// once, as a load balancer's pool does: each new one would be a
// connection the replica counts against the balancer's address. It
// closes a connection idle for 5 s, before a replica does: serve closes
// one that has carried no request 10 s after it opened (headerTimeout),
// and a POST sent on it just then fails with EOF — which a transport
// whose goroutines wait for busy processors notices too late, and a
// POST is not retried. (Seen in CI: "Post …: EOF" with nothing in the
// replicas' logs.)
var fleetTransport = &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: 5 * time.Second}

// connect starts an MCP session through the balancer.
func (f *fleet) connect(ctx context.Context) (*mcp.ClientSession, error) {
	client := mcp.NewClient(&mcp.Implementation{Name: "fleet-client", Version: "1"}, nil)
	return client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: f.endpoints()[0].String(),
		HTTPClient: &http.Client{Transport: &balancer{f: f}}, MaxRetries: -1}, nil)
}

// countingServer is the MCP server behind the fleet: its tool "read"
// echoes its text and counts the calls that reach it, by text.
type countingServer struct {
	*httptest.Server
	mu    sync.Mutex
	calls map[string]int
}

func newCountingServer(t *testing.T) *countingServer {
	s := &countingServer{calls: map[string]int{}}
	server := mcp.NewServer(&mcp.Implementation{Name: "count", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "read", Description: "echo"},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			s.mu.Lock()
			s.calls[in.Text]++
			s.mu.Unlock()
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + in.Text}}}, nil, nil
		})
	s.Server = httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
	t.Cleanup(s.Close)
	return s
}

// reachedBySession counts the calls that reached the server by session:
// each call's text is "<session>/<n>".
func (s *countingServer) reachedBySession() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for text, n := range s.calls {
		session, _, _ := strings.Cut(text, "/")
		out[session] += n
	}
	return out
}

func (s *countingServer) reached(text string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[text]
}

// callAll makes calls calls at once in session cs, each with its own text,
// and returns how many were allowed; a denial must name the call limit.
func callAll(ctx context.Context, cs *mcp.ClientSession, calls int) (allowed int, err error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for i := range calls {
		wg.Go(func() {
			text := fmt.Sprintf("%s/%d", cs.ID(), i)
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read", Arguments: map[string]any{"text": text}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case !res.IsError && res.Content[0].(*mcp.TextContent).Text == "echo: "+text:
				allowed++
			case res.IsError && strings.Contains(res.Content[0].(*mcp.TextContent).Text, "call limit"):
			default:
				errs = append(errs, fmt.Errorf("call %s: unexpected result %+v", text, res.Content[0]))
			}
		})
	}
	wg.Wait()
	return allowed, errors.Join(errs...)
}

// allowedCalls counts the log's allowed tool calls, by session.
func allowedCalls(t *testing.T, dsn string) map[string]int {
	t.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st := db.Audit()
	defer st.Close()
	bySession := map[string]int{}
	f := audit.Filter{Event: "tool.call", Outcome: audit.OutcomeAllowed, Limit: audit.MaxLimit}
	for {
		page, err := audit.Query(ctx, st, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			bySession[r.Session]++
		}
		if page.Next == "" {
			return bySession
		}
		f.Cursor = page.Next
	}
}

func verifyFleetLog(t *testing.T, f *fleet) {
	t.Helper()
	out, err := exec.Command("agentsec", "audit", "verify", "-db", f.dsn, "-pubkey", filepath.Join(f.dir, "fleet.pub")).CombinedOutput()
	if err != nil {
		t.Fatalf("agentsec audit verify on the shared log: %v\n%s", err, out)
	}
	t.Logf("agentsec audit verify: %s", strings.TrimSpace(string(out)))
}

// Three replicas, hundreds of sessions spread over them, each session's
// calls made at once: exactly the call limit is allowed in every session,
// every allowed call reached the server once and is in the one log, which
// verifies.
func TestReplicasShareBudgetsAndLog(t *testing.T) {
	const (
		sessions = 200
		limit    = 3
		attempts = 5
	)
	f := newFleet(t, 3, limit)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	ids := make([]string, sessions)
	allowed := make([]int, sessions)
	errs := make([]error, sessions)
	for i := range sessions {
		wg.Go(func() {
			cs, err := f.connect(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("connect: %w", err)
				return
			}
			defer cs.Close()
			ids[i] = cs.ID()
			allowed[i], errs[i] = callAll(ctx, cs, attempts)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	f.stop()

	logged := allowedCalls(t, f.dsn)
	for i, id := range ids {
		if allowed[i] != limit || logged[id] != limit {
			t.Errorf("session %d: %d calls allowed, %d logged as allowed; want %d", i, allowed[i], logged[id], limit)
		}
		reached := 0
		for c := range attempts {
			n := f.upstream.reached(fmt.Sprintf("%s/%d", id, c))
			if n > 1 {
				t.Errorf("session %d: call %d reached the server %d times", i, c, n)
			}
			reached += n
		}
		if reached != limit {
			t.Errorf("session %d: %d calls reached the server, want %d", i, reached, limit)
		}
	}
	verifyFleetLog(t, f)
}

// rawSession is an MCP session over plain HTTP requests through the
// balancer: unlike the SDK's client, a request that fails leaves the
// session usable, as a client that retries would find it.
type rawSession struct {
	http *http.Client
	url  string
	id   string
	next atomic.Int64
}

func (f *fleet) rawConnect() (*rawSession, error) {
	s := &rawSession{http: &http.Client{Transport: &balancer{f: f}, Timeout: 30 * time.Second}, url: f.endpoints()[0].String()}
	resp, err := s.post(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("initialize: %s", resp.Error.Message)
	}
	if _, err := s.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`); err != nil {
		return nil, err
	}
	return s, nil
}

type rawResponse struct {
	Result *struct {
		IsError bool `json:"isError"`
		Content []struct {
			Text string `json:"text"`
		} `json:"content"`
	} `json:"result"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// post sends one message and returns its answer, if it has one.
func (s *rawSession) post(body string) (*rawResponse, error) {
	req, _ := http.NewRequest(http.MethodPost, s.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if s.id != "" {
		req.Header.Set("Mcp-Session-Id", s.id)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if s.id == "" {
		s.id = resp.Header.Get("Mcp-Session-Id")
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusAccepted {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		for line := range strings.Lines(string(data)) {
			if d, ok := strings.CutPrefix(line, "data: "); ok && strings.Contains(d, `"id"`) {
				data = []byte(d)
			}
		}
	}
	var r rawResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("answer %q: %w", data, err)
	}
	return &r, nil
}

// call makes one tools/call of read and reports what came of it.
func (s *rawSession) call(text string) (outcome string, err error) {
	id := s.next.Add(1)
	r, err := s.post(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"read","arguments":{"text":%q}}}`, id, text))
	switch {
	case err != nil && strings.Contains(err.Error(), "HTTP 503"):
		// A replica taking the session up while the database is down.
		return "unavailable", nil
	case err != nil:
		return "failed", err
	case r.Error != nil:
		return "failed", errors.New(r.Error.Message)
	case r.Result == nil || len(r.Result.Content) == 0:
		return "failed", errors.New("an answer without content")
	case !r.Result.IsError && r.Result.Content[0].Text == "echo: "+text:
		return "allowed", nil
	case r.Result.IsError && strings.Contains(r.Result.Content[0].Text, "call limit"):
		return "limit", nil
	case r.Result.IsError && strings.Contains(r.Result.Content[0].Text, "unavailable"),
		r.Result.IsError && strings.Contains(r.Result.Content[0].Text, "could not be recorded"):
		return "unavailable", nil
	}
	return "failed", fmt.Errorf("unexpected answer %+v", r.Result.Content[0])
}

// One replica killed with SIGKILL and the database stopped and started
// again while sessions keep calling: what a client was told was allowed
// is in the log, no session is allowed more than its limit, the replicas
// recover by themselves, and the log verifies.
func TestReplicasSurviveKillAndDatabaseRestart(t *testing.T) {
	const (
		sessions = 40
		limit    = 25 // reached after the database is back
		pace     = 150 * time.Millisecond
		run      = 9 * time.Second
	)
	f := newFleet(t, 3, limit)
	start := time.Now()
	var (
		mu        sync.Mutex
		acked     = map[string]int{} // allowed calls the client was told of, by session
		limited   = map[string]int{} // limit refusals, by session
		outcomes  = map[string]int{}
		restarted time.Time
		afterUp   int // calls allowed after the database came back
	)
	var wg, connected sync.WaitGroup
	for range sessions {
		connected.Add(1)
		wg.Go(func() {
			s, err := f.rawConnect()
			connected.Done()
			if err != nil {
				t.Errorf("connect: %v", err)
				return
			}
			// Paced calls through the failures, then calls until the
			// session's limit refuses one.
			sawLimit := false
			for i := 0; time.Since(start) < run || !sawLimit && time.Since(start) < run+30*time.Second; i++ {
				outcome, err := s.call(fmt.Sprintf("%s/%d", s.id, i))
				sawLimit = sawLimit || outcome == "limit"
				mu.Lock()
				outcomes[outcome]++
				if outcome == "limit" {
					limited[s.id]++
				}
				if outcome == "allowed" {
					acked[s.id]++
					if !restarted.IsZero() && time.Now().After(restarted) {
						afterUp++
					}
				}
				mu.Unlock()
				if outcome == "failed" && testing.Verbose() {
					t.Logf("call failed: %v", err)
				}
				if time.Since(start) < run {
					time.Sleep(pace)
				}
			}
		})
	}

	// Every session is open before anything fails: an initialize, which
	// starts a session's upstream server, can take more than the 1.5 s
	// below on a loaded machine, and one cut by the kill is not what this
	// test is about.
	connected.Wait()
	time.Sleep(1500 * time.Millisecond)
	f.mu.Lock()
	victim := f.replicas[1]
	f.mu.Unlock()
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.exited
	time.Sleep(1500 * time.Millisecond)
	if err := f.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := f.pg.Restart(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	restarted = time.Now()
	mu.Unlock()
	wg.Wait()
	f.stop()
	t.Logf("outcomes: %v", outcomes)

	if outcomes["unavailable"] == 0 {
		t.Error("no call was denied while the database was down")
	}
	if afterUp == 0 {
		t.Error("no call was allowed after the database came back: the replicas did not recover")
	}
	if len(limited) != sessions {
		t.Errorf("%d of %d sessions were refused at their limit, want all", len(limited), sessions)
	}
	if outcomes["failed"] > sessions {
		// A session has one call in flight at a time: only those on the
		// killed replica when it died may fail outright.
		t.Errorf("%d calls failed outright, want at most one per session (%d), those in flight on the killed replica", outcomes["failed"], sessions)
	}
	logged := allowedCalls(t, f.dsn)
	for id, n := range acked {
		if n > logged[id] {
			t.Errorf("session %s: the client was told of %d allowed calls, the log holds %d", id, n, logged[id])
		}
	}
	for id, n := range logged {
		if n > limit {
			t.Errorf("session %s: %d calls allowed, over its limit of %d", id, n, limit)
		}
	}
	// A call reaches the server only with a reservation, so not even the
	// calls whose outcome could not be recorded go over a limit.
	for id, n := range f.upstream.reachedBySession() {
		if n > limit {
			t.Errorf("session %s: %d calls reached the server, over its limit of %d", id, n, limit)
		}
	}
	verifyFleetLog(t, f)
}
