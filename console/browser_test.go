package console_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/mcpgate"
)

// chromium returns the path of a Chromium or Chrome the tests can drive,
// or skips the test — failing it in CI, where .ci/run installs Debian's
// chromium.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium: .ci/run installs Debian's chromium package")
	}
	t.Skip("no Chromium for the browser tests (apt-get install chromium)")
	return ""
}

// A tab is a page in a headless Chromium, in a browser context of its
// own (its own cookies), with every JavaScript exception and console or
// browser-log error the page reports — a script the Content-Security-
// Policy refuses among them.
type tab struct {
	t      *testing.T
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

func newTab(t *testing.T, browser context.Context) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				tb.mu.Lock()
				tb.errors = append(tb.errors, string(m.Type)+": "+m.Text)
				tb.mu.Unlock()
			}
		}
	}()
	return tb
}

func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatal(err)
	}
}

// value runs an action that returns a value.
func value[T any](tb *tab, a chromedp.Action[T]) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tb.t.Fatal(err)
	}
	return v
}

// jsErrors returns what the page reported as errors.
func (tb *tab) jsErrors() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]string(nil), tb.errors...)
}

// screenshot saves the page as name.png in $AGENTSEC_SCREENSHOTS, when
// set: the README's pictures of the console.
func (tb *tab) screenshot(name string) {
	dir := os.Getenv("AGENTSEC_SCREENSHOTS")
	if dir == "" {
		return
	}
	tb.do(chromedp.EmulateViewport(1280, 720))
	png := value(tb, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

// startChromium starts a headless Chromium for the test.
func startChromium(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1280, 720))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	return browser
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

// signIn opens the console at url in a new tab and signs in with token.
func signIn(t *testing.T, browser context.Context, url, token string) *tab {
	t.Helper()
	tb := newTab(t, browser)
	tb.do(chromedp.Navigate(url+"/login"), chromedp.WaitVisible(css(`input[name="token"]`)),
		chromedp.SendKeys(css(`input[name="token"]`), token), chromedp.Submit(css(`input[name="token"]`)),
		chromedp.WaitVisible(css(`#decisions`)))
	return tb
}

// In Chromium: a full verification runs with its progress shown, and a
// tampered copy of the log shows its first bad record.
func TestConsoleVerifiesInChromium(t *testing.T) {
	exe := chromium(t)
	calls := 20_000 // long enough for the page to show the bar moving
	if raceEnabled || testing.Short() {
		calls = 4_000
	}
	store, key, bad := tamperedLog(t, calls)
	_, tsrv := consoleOver(t, tampered{copyLog(t, store), bad}, key)
	_, srv := consoleOver(t, store, key)
	browser := startChromium(t, exe)
	start := time.Now()

	viewer := signIn(t, browser, srv.URL, viewerToken)
	viewer.do(chromedp.Navigate(srv.URL+"/integrity"), chromedp.Click(css(`#verify`)),
		chromedp.WaitVisible(css(`#verify-progress`)), chromedp.WaitVisible(css(`#verify-result`)))
	result := value(viewer, chromedp.Text(css(`#verify-result`)))
	done := value(viewer, chromedp.Evaluate[float64](`document.getElementById("verify-progress").value / document.getElementById("verify-progress").max`))
	// The calls, the configuration's assignment recorded when the log was
	// written and again when the console's stack opened it.
	if !strings.HasPrefix(result, fmt.Sprintf("Verified %d records", calls+2)) || done != 1 {
		t.Errorf("the verification ended with %q, the bar at %v", result, done)
	}
	t.Logf("verified %d records in the browser in %v", calls, time.Since(start))
	viewer.screenshot("integrity")

	copyTab := signIn(t, browser, tsrv.URL, viewerToken)
	copyTab.do(chromedp.Navigate(tsrv.URL+"/integrity"), chromedp.Click(css(`#verify`)), chromedp.WaitVisible(css(`#first-bad`)))
	if link := value(copyTab, chromedp.Text(css(`#first-bad`))); link != fmt.Sprintf("First bad record: %d", bad) {
		t.Errorf("the tampered copy's first bad record: %q, want %d", link, bad)
	}
	for name, tb := range map[string]*tab{"intact": viewer, "tampered": copyTab} {
		if errs := tb.jsErrors(); len(errs) > 0 {
			t.Errorf("the %s log's pages reported errors: %s", name, strings.Join(errs, "; "))
		}
	}
}

// gatewayFront serves MCP through a gateway on stack in front of a server
// whose tools "read" and "deploy" answer "done".
func gatewayFront(t *testing.T, gw *mcpgate.Gateway) string {
	t.Helper()
	server := mcp.NewServer(&mcp.Implementation{Name: "tools", Version: "1"}, nil)
	for _, name := range []string{"read", "deploy"} {
		mcp.AddTool(server, &mcp.Tool{Name: name, Description: name},
			func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil, nil
			})
	}
	upstream := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
	t.Cleanup(upstream.Close)
	gw.Upstreams = []mcpgate.Upstream{mcpgate.HTTPUpstream("tools", upstream.URL, 0)}
	front := httptest.NewServer(gw)
	t.Cleanup(front.Close)
	return front.URL
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// consoleWithGateway is newConsole with an MCP gateway on the same stack
// in front of a server of two tools, whose sessions the console shows;
// it returns the console, and an MCP session of agent bot.
func consoleWithGateway(t *testing.T) (*agentsec.Stack, *httptest.Server, *mcp.ClientSession) {
	t.Helper()
	stack, _ := newConsole(t)
	gw := &mcpgate.Gateway{Stack: stack, Agents: []mcpgate.Credential{{TokenSHA256: sha256Of("ags_bot"), Agent: "bot"}}}
	t.Cleanup(func() { gw.Close() })
	endpoint := gatewayFront(t, gw)
	metrics := console.NewMetrics()
	gw.Observer = metrics
	srv := httptest.NewServer(console.Handler(console.Config{Stack: stack, Operator: consoleOperators, Metrics: metrics,
		Sessions: gw, Upstreams: gw}))
	t.Cleanup(srv.Close)
	client := mcp.NewClient(&mcp.Implementation{Name: "bot", Version: "1"}, nil)
	cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: endpoint,
		HTTPClient: &http.Client{Transport: bearer{"ags_bot"}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return stack, srv, cs
}

// In a real Chromium: an operator signs in with a token; a call denied
// through the MCP endpoint is in the live view within a second, with its
// reason; an admin raises the agent's level and its next call is allowed,
// with the change in the audit search; a viewer sees no controls; and no
// page reports a JavaScript error.
func TestConsoleInChromium(t *testing.T) {
	exe := chromium(t)
	_, srv, cs := consoleWithGateway(t)
	ctx := context.Background()

	browser := startChromium(t, exe)

	admin := newTab(t, browser)
	admin.do(chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(css(`input[name="token"]`)))
	admin.screenshot("login")
	admin.do(chromedp.SendKeys(css(`input[name="token"]`), adminToken), chromedp.Submit(css(`input[name="token"]`)),
		chromedp.WaitVisible(css(`#decisions`)))
	// The live view is connected when its status says so.
	value(admin, chromedp.Poll[bool](`document.getElementById("status").textContent === "live"`, chromedp.WithPollingTimeout(5*time.Second)))

	denied := time.Now()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "deploy"})
	if err != nil || !res.IsError {
		t.Fatalf("deploy before the change: %+v %v", res, err)
	}
	reason := value(admin, chromedp.Poll[string](`(() => { const r = document.querySelector("#decisions tbody tr.deny"); return r && r.cells[3].textContent === "deploy" && r.cells[6].textContent; })()`,
		chromedp.WithPollingTimeout(5*time.Second), chromedp.WithPollingInterval(20*time.Millisecond)))
	shown := time.Since(denied)
	t.Logf("the denial was in the live view %v after the call, reason %q", shown, reason)
	if shown > time.Second {
		t.Errorf("the denial took %v to reach the live view, more than a second", shown)
	}
	if !strings.Contains(reason, "below the required level") {
		t.Errorf("the live view's reason: %q", reason)
	}
	admin.screenshot("live")

	// The admin raises bot's level.
	admin.do(chromedp.Navigate(srv.URL+"/agents"), chromedp.WaitVisible(css(`#assign`)),
		chromedp.SendKeys(css(`#assign input[name="agent"]`), "bot"),
		chromedp.SetValue(css(`#assign select[name="level"]`), "privileged"),
		chromedp.SendKeys(css(`#assign input[name="reason"]`), "deploy window INC-7"),
		chromedp.Submit(css(`#assign input[name="agent"]`)),
		chromedp.WaitVisible(css(`p.message.ok`)))
	if notice := value(admin, chromedp.Text(css(`p.message.ok`))); !strings.Contains(notice, "bot now holds privileged") {
		t.Errorf("after assigning: %q", notice)
	}
	admin.screenshot("agents")
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "deploy"})
	if err != nil || res.IsError {
		t.Errorf("deploy after the change: %+v %v", res, err)
	}
	admin.do(chromedp.Navigate(srv.URL+"/audit?event=trust.assign&agent=bot"), chromedp.WaitVisible(css(`#records`)))
	if found := value(admin, chromedp.Text(css(`#records tbody`))); strings.Count(found, "trust.assign") != 2 { // the configuration's, and the admin's
		t.Errorf("the audit search for bot's trust.assign records:\n%s", found)
	}
	admin.screenshot("audit")
	admin.do(chromedp.Click(css(`#records tbody tr:last-child a`)), chromedp.WaitVisible(css(`#leaf-hash`)))
	if detail := value(admin, chromedp.Text(css(`main`))); !strings.Contains(detail, "root") || !strings.Contains(detail, "deploy window INC-7") {
		t.Errorf("the change's record page does not name the admin and the reason:\n%s", detail)
	}
	admin.screenshot("record")
	admin.do(chromedp.Navigate(srv.URL+"/sessions"), chromedp.WaitVisible(css(`#sessions`)))
	if row := value(admin, chromedp.Text(css(`#sessions tbody`))); !strings.Contains(row, cs.ID()) || !strings.Contains(row, "1 of 1000") {
		t.Errorf("the sessions page: %q, want bot's session with its one allowed call", row)
	}
	admin.screenshot("sessions")
	// The upstream is up; of its tools, bot may call both now.
	if _, err := cs.ListTools(ctx, nil); err != nil {
		t.Fatal(err)
	}
	admin.do(chromedp.Navigate(srv.URL+"/upstreams"), chromedp.WaitVisible(css(`#upstream-tools`)))
	if up := value(admin, chromedp.Text(css(`#upstream-tools`))); !strings.Contains(up, "tools up") ||
		!strings.Contains(up, "deploy\tprivileged\tbot") || !strings.Contains(up, "read\tpublic\tbot") {
		t.Errorf("the upstreams page: %q", up)
	}
	admin.screenshot("upstreams")

	// A viewer, in a browser context of its own, sees no controls.
	viewer := newTab(t, browser)
	viewer.do(chromedp.Navigate(srv.URL+"/login"), chromedp.WaitVisible(css(`input[name="token"]`)),
		chromedp.SendKeys(css(`input[name="token"]`), viewerToken), chromedp.Submit(css(`input[name="token"]`)),
		chromedp.WaitVisible(css(`#decisions`)), chromedp.Navigate(srv.URL+"/agents"), chromedp.WaitVisible(css(`#assignments`)))
	if forms := value(viewer, chromedp.Evaluate[int](`document.querySelectorAll("form[action^='/agents/']").length`)); forms != 0 {
		t.Errorf("a viewer sees %d change forms", forms)
	}

	for name, tb := range map[string]*tab{"admin": admin, "viewer": viewer} {
		if errs := tb.jsErrors(); len(errs) > 0 {
			t.Errorf("the %s's pages reported errors: %s", name, strings.Join(errs, "; "))
		}
	}
}

func sha256Of(s string) [32]byte { return sha256.Sum256([]byte(s)) }
