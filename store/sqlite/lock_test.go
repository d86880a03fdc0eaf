package sqlite_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
)

// flockPlatform reports whether this platform has the writer's lock (see
// lock_flock.go).
func flockPlatform() bool {
	switch runtime.GOOS {
	case "darwin", "dragonfly", "freebsd", "linux", "netbsd", "openbsd":
		return true
	}
	return false
}

// A second writer on a log is refused, naming the first, and the first
// goes on appending; readers still open; once the first closes, the log
// is free again.
func TestSecondWriterRefused(t *testing.T) {
	if !flockPlatform() {
		t.Skip("no writer lock on " + runtime.GOOS)
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	openedOn := time.Now().UTC().Format("2006-01-02") // not the day after, at midnight
	first, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, first, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	logEvents := func(n int) {
		t.Helper()
		for range n {
			if _, err := l.Log(ctx, audit.Record{Event: "e"}); err != nil {
				t.Fatalf("the first writer's append: %v", err)
			}
		}
	}
	logEvents(3)

	// flock locks belong to an open file, so a second Store in this
	// process conflicts as another process would.
	for _, opts := range []sqlite.Options{{Create: true}, {}} {
		second, err := sqlite.Open(ctx, path, opts)
		if err == nil {
			second.Close()
			t.Fatalf("second writable Open(%+v) succeeded while the first holds the log", opts)
		}
		var inUse *sqlite.InUseError
		if !errors.As(err, &inUse) || inUse.Path != path {
			t.Fatalf("second Open = %v, want an *InUseError for %s", err, path)
		}
		host, _ := os.Hostname()
		for _, want := range []string{path, "in use by pid " + strconv.Itoa(os.Getpid()), strconv.Quote(host),
			os.Args[0], "since " + openedOn,
			"stop it, or give this one another audit.path"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("second Open error = %q, want it to contain %q", err, want)
			}
		}
	}
	logEvents(3) // the refused Opens changed nothing for the first
	if err := first.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	r, err := sqlite.Open(ctx, path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("ReadOnly Open while a writer holds the log: %v", err)
	}
	if n, err := r.Size(ctx); n != 6 || err != nil {
		t.Errorf("ReadOnly Size = %d, %v; want 6", n, err)
	}
	r.Close()

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := sqlite.Open(ctx, path, sqlite.Options{})
	if err != nil {
		t.Fatalf("Open after the first writer closed: %v", err)
	}
	l2, err := audit.NewLog(ctx, again, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if rec, err := l2.Log(ctx, audit.Record{Event: "e"}); err != nil || rec.Seq != 6 {
		t.Errorf("append after reopening = seq %d, %v; want 6", rec.Seq, err)
	}
}

// Environment of the lock test's child processes.
const lockDBEnv = "AGENTSEC_LOCK_DB"

// TestLockChild is a second process for TestWritersStartingAtOnce: it
// waits for a line on stdin, opens the database, prints "ok" or "error
// <message>", and if it opened the database holds it until stdin closes.
func TestLockChild(t *testing.T) {
	path := os.Getenv(lockDBEnv)
	if path == "" {
		t.Skip("runs only as TestWritersStartingAtOnce's child process")
	}
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), path, sqlite.Options{Create: true})
	if err != nil {
		fmt.Printf("error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	fmt.Println("ok")
	io.Copy(io.Discard, in)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// Processes starting at once on a new database: exactly one opens it,
// and every other is told who holds it — none fails on the schema.
func TestWritersStartingAtOnce(t *testing.T) {
	if !flockPlatform() {
		t.Skip("no writer lock on " + runtime.GOOS)
	}
	for round := range 3 {
		path := filepath.Join(t.TempDir(), "audit.db")
		type child struct {
			cmd   *exec.Cmd
			stdin io.WriteCloser
			line  chan string
		}
		children := make([]child, 4)
		for i := range children {
			cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), lockDBEnv+"="+path)
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line := make(chan string, 1)
			go func() {
				l, _ := bufio.NewReader(stdout).ReadString('\n')
				line <- strings.TrimSpace(l)
				io.Copy(io.Discard, stdout)
			}()
			children[i] = child{cmd, stdin, line}
			t.Cleanup(func() { stdin.Close(); cmd.Wait() })
		}
		time.Sleep(100 * time.Millisecond) // let every child reach its read
		for _, c := range children {
			io.WriteString(c.stdin, "go\n")
		}
		var opened, refused int
		for i, c := range children {
			select {
			case l := <-c.line:
				switch {
				case l == "ok":
					opened++
				case strings.HasPrefix(l, "error ") && strings.Contains(l, "is in use by pid ") &&
					strings.Contains(l, "stop it, or give this one another audit.path"):
					refused++
					if refused == 1 && round == 0 {
						t.Logf("child %d: %s", i, l)
					}
				default:
					t.Errorf("round %d: child %d said %q, want ok or the in-use error naming its holder", round, i, l)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: child %d said nothing in 30s", round, i)
			}
		}
		if opened != 1 || refused != len(children)-1 {
			t.Fatalf("round %d: %d children opened the new database and %d were refused, want 1 and %d",
				round, opened, refused, len(children)-1)
		}
		for _, c := range children {
			c.stdin.Close()
			if err := c.cmd.Wait(); err != nil {
				t.Fatalf("round %d: child: %v", round, err)
			}
		}
		// The winner made a whole database, and left the log free.
		st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
		if err != nil {
			t.Fatalf("round %d: Open after the children: %v", round, err)
		}
		if n, err := st.Size(context.Background()); n != 0 || err != nil {
			t.Errorf("round %d: Size = %d, %v; want an empty log", round, n, err)
		}
		st.Close()
	}
}

// A database left without tables — a first start that died before its
// schema committed — is taken as new.
func TestOpenEmptyDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := sqlite.Open(ctx, path, sqlite.Options{}); err == nil {
		st.Close()
		t.Fatal("Open without Create of an empty file succeeded, want an error")
	}
	st, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatalf("Open of an empty file with Create: %v", err)
	}
	defer st.Close()
	if n, err := st.Size(ctx); n != 0 || err != nil {
		t.Errorf("Size = %d, %v; want an empty log", n, err)
	}
}
