// Package clients_test runs the test suites of the decision API's
// clients — TypeScript in typescript/, Python in python/ — against an
// agentsec built from this tree, so that "go test ./..." runs them too.
//
// Each needs its language's tools: Node.js and `npm ci --prefix
// clients/typescript`; Python 3 with httpx and pytest (Debian:
// python3-httpx python3-pytest). Without them a suite is skipped, saying
// what to install — except in CI (CI=true), where it fails: .ci/run
// installs them, and a suite that did not run has not passed.
package clients_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var agentsecBin string // built once by TestMain

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "agentsec-clients-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		agentsecBin = filepath.Join(dir, "agentsec")
		build := exec.Command("go", "build", "-o", agentsecBin, "../cmd/agentsec")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building agentsec:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// missing skips t, or fails it in CI, for a tool the suite needs.
func missing(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI must run this suite, but it %s", what)
	}
	t.Skipf("skipped: it %s", what)
}

// suiteTimeout bounds one client's suite.
const suiteTimeout = 5 * time.Minute

func TestTypeScriptClient(t *testing.T) {
	if testing.Short() {
		t.Skip("builds agentsec and runs the TypeScript client's suite; skipped with -short")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		missing(t, "needs Node.js and npm on PATH")
	}
	if _, err := os.Stat("typescript/node_modules/typescript"); err != nil {
		missing(t, "needs the client's dev packages: run `npm ci --prefix clients/typescript` (.ci/run does)")
	}
	run(t, "typescript", "npm", "test")
}

func TestPythonClient(t *testing.T) {
	if testing.Short() {
		t.Skip("builds agentsec and runs the Python client's suite; skipped with -short")
	}
	python := findPython()
	if python == "" {
		missing(t, "needs Python 3 with httpx and pytest: apt-get install python3-httpx python3-pytest (.ci/run does)")
	}
	run(t, "python", python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
}

// findPython returns a Python 3 that has httpx and pytest: AGENTSEC_PYTHON,
// Debian's, or the one on PATH.
func findPython() string {
	for _, p := range []string{os.Getenv("AGENTSEC_PYTHON"), "/usr/bin/python3", "python3"} {
		if p == "" {
			continue
		}
		if exec.Command(p, "-c", "import httpx, pytest").Run() == nil {
			return p
		}
	}
	return ""
}

// run runs a client's suite in dir with AGENTSEC_BIN set, and fails t,
// showing its output, if the suite fails.
func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AGENTSEC_BIN="+agentsecBin, "PYTHONPATH=src", "PYTHONDONTWRITEBYTECODE=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if testing.Verbose() || err != nil {
		t.Logf("%s %v in clients/%s:\n%s", name, args, dir, out.String())
	}
	if err != nil {
		t.Fatalf("the suite failed: %v", err)
	}
}

// TestREADMEQuickStarts: the TypeScript and Python quick starts of the
// repository's README are the ones the clients' READMEs hold, which their
// suites run; so the README's run as written.
func TestREADMEQuickStarts(t *testing.T) {
	readme := readFile(t, "../README.md")
	for _, c := range []struct{ section, fence, client string }{
		{"### TypeScript", "```js\n", "typescript/README.md"},
		{"### Python", "```python\n", "python/README.md"},
	} {
		_, rest, found := strings.Cut(readme, "\n"+c.section+"\n")
		if !found {
			t.Errorf("README.md has no %q section", c.section)
			continue
		}
		_, rest, found = strings.Cut(rest, c.fence)
		block, _, closed := strings.Cut(rest, "```\n")
		if !found || !closed {
			t.Errorf("README.md's %s section has no %s block", c.section, strings.TrimSpace(c.fence))
			continue
		}
		if !strings.Contains(readFile(t, c.client), block) {
			t.Errorf("README.md's %s quick start is not the one clients/%s holds (and tests); copy it from there", c.section, c.client)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
