package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
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
}

type replica struct {
	cmd      *exec.Cmd
	endpoint *url.URL
	exited   chan struct{}
}

const fleetToken = "ags_fleet-token"

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
`, sha256.Sum256([]byte(fleetToken)), calls, f.dsn, f.upstream.URL)
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
			} else if testing.Verbose() {
				fmt.Fprintln(os.Stderr, "replica:", lines.Text())
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

var fleetTransport = &http.Transport{MaxIdleConnsPerHost: 64}

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

// allowedCalls reads the log's allowed tool calls, by session, and checks
// that no call appears twice.
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
	seen := map[string]bool{}
	f := audit.Filter{Event: "tool.call", Outcome: audit.OutcomeAllowed, Limit: audit.MaxLimit}
	for {
		page, err := audit.Query(ctx, st, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			bySession[r.Session]++
			key := fmt.Sprint(r.Session, r.Seq)
			if seen[key] {
				t.Errorf("record %d appears twice", r.Seq)
			}
			seen[key] = true
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
	ctx := context.Background()
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
