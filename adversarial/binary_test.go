package adversarial

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// agentsecBinary builds the agentsec command once for the package's tests.
func agentsecBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agentsec-adversarial-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "agentsec")
		goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goCmd); err != nil {
			goCmd = "go"
		}
		out, err := exec.Command(goCmd, "build", "-o", binary, "github.com/agentsec/agentsec/cmd/agentsec").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// TestServeBinaryUnderAttack runs the real agentsec serve, configured by
// a file, in front of a naive upstream, and attacks it over HTTP as an
// agent with a valid token would — a cancel storm, smuggled
// notifications, look-alike tool names, a task's result fetched again and
// again — then stops it with SIGTERM as a supervisor would. The upstream
// ran no more than the session's limit, ran nothing smuggled, every
// execution is in the log, and the log verifies from its file with the
// public key alone.
func TestServeBinaryUnderAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agentsec binary; skipped with -short")
	}
	bin := agentsecBinary(t)
	up := newNaiveServer(t, func(s *naiveServer) { s.tasks = true; s.loose = true; s.slow = 300 * time.Millisecond })
	dir := t.TempDir()
	skey, vkey, err := audit.GenerateKey("adversarial")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "audit.key"), []byte(skey+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "audit.pub"), []byte(vkey+"\n"), 0o644)
	cfg := fmt.Sprintf(`namespace: adversarial
trust:
  default_level: public
  rules:
    - {tool: fs.read, level: public}
    - {tool: fs.write, level: verified}
    - {tool: "admin.*", level: privileged}
  agents:
    - {id: agent, level: public, token_sha256: %x}
    - {id: other, level: public, token_sha256: %x}
budget: {tokens: 100000, calls: 5, call_tokens: 50000}
audit: {path: audit.db, key_file: audit.key, checkpoint_every: 1000}
listen: 127.0.0.1:0
upstreams: [{name: naive, url: %q, timeout: 5s}]
`, sha256.Sum256([]byte(agentToken)), sha256.Sum256([]byte(otherToken)), up.URL())
	if err := os.WriteFile(filepath.Join(dir, "agentsec.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-config", "agentsec.yaml")
	cmd.Dir = dir
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	addr := make(chan string, 1)
	var logged strings.Builder
	var logMu sync.Mutex
	go func() {
		re := regexp.MustCompile(`serving MCP on (http://\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logged.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- strings.TrimSuffix(m[1], "/")
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	var base string
	select {
	case base = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("agentsec serve did not start")
	}
	h := &harness{t: t, up: up, lim: limits{calls: 5}}
	f := &httpFront{h: h, url: base}
	session, status := f.open(agentToken)
	if status != http.StatusOK {
		t.Fatalf("initialize: %d", status)
	}

	// Smuggled and look-alike calls: refused.
	f.post(agentToken, session, `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"admin.wipe","arguments":{}}}`)
	f.post(agentToken, session, `{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"admin.wipe","arguments":{}}}`)
	f.callTool(agentToken, session, 1, "ADMIN.WIPE", "")
	f.callTool(agentToken, session, 2, "admin.wipe ", "")
	// A task's result, fetched again and again.
	f.post(agentToken, session, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"big","arguments":{"size":1000},"task":{}}}`)
	for i := range 3 {
		f.post(agentToken, session, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tasks/result","params":{"taskId":"task-1"}}`, 4+i))
	}
	// A cancel storm over what is left of the budget.
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() { f.callTool(agentToken, session, 100+i, "slow", "") })
	}
	waitRunning(t, up, 1)
	for range 3 {
		for i := range 12 {
			f.post(agentToken, session, fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%d}}`, 100+i))
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	for up.running.Load() > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // late answers recorded

	if most := up.maxPerSession(); most > 5 {
		t.Errorf("the upstream ran %d calls for a session limited to 5", most)
	}
	if n := up.ranTool("admin.wipe"); n != 0 {
		t.Errorf("the upstream ran admin.wipe %d times", n)
	}

	// Stopped as a supervisor stops it.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			logMu.Lock()
			t.Errorf("agentsec serve exited with %v after SIGTERM:\n%s", err, logged.String())
			logMu.Unlock()
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agentsec serve did not exit within 15s of SIGTERM")
	}
	out, err := exec.Command(bin, "audit", "verify", "-db", filepath.Join(dir, "audit.db"), "-pubkey", filepath.Join(dir, "audit.pub")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verified") || strings.Contains(string(out), "not yet covered") {
		t.Errorf("audit verify after SIGTERM: %v\n%s", err, out)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "audit.db"), sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	page, err := audit.Query(context.Background(), st, audit.Filter{Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if ex, rec := up.executions(), executedRecords(page.Records); ex > rec {
		t.Errorf("the upstream executed %d calls; the log records %d that reached it", ex, rec)
	}
	refused := 0
	for _, r := range page.Records {
		if r.Outcome == audit.OutcomeDenied && r.Tool == "admin.wipe" {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("%d smuggled tools/call recorded as refused, want 2", refused)
	}
}
