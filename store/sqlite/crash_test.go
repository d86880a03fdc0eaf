package sqlite_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
)

// The crash test runs this test binary again as a child that appends to a
// log as fast as it can and prints "seq agent" for every append that
// returned; the parent kills it with SIGKILL at a random moment, reopens
// the log, and checks that every printed append is there and that the log
// verifies.
const (
	crashDBEnv  = "AGENTSEC_CRASH_DB"
	crashKeyEnv = "AGENTSEC_CRASH_KEY"
	crashTagEnv = "AGENTSEC_CRASH_TAG"
)

func TestCrashChild(t *testing.T) {
	db := os.Getenv(crashDBEnv)
	if db == "" {
		t.Skip("runs only as the crash test's child process")
	}
	ctx := context.Background()
	signer, verifier, err := audit.NewSigner(os.Getenv(crashKeyEnv))
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, db, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "crash", Signer: signer, Verifier: verifier,
		CheckpointEvery: 64, CheckpointInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				agent := fmt.Sprintf("%s-w%d-%d", os.Getenv(crashTagEnv), w, i)
				rec, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: agent, Tokens: int64(i)})
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d %s\n", rec.Seq, agent)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a child process many times; skipped with -short")
	}
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "audit.db")
	skey, _, err := audit.GenerateKey("crash-test")
	if err != nil {
		t.Fatal(err)
	}
	_, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	rounds := 25
	acked := map[uint64]string{}
	rng := rand.New(rand.NewPCG(7, 11))
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDBEnv+"="+db, crashKeyEnv+"="+skey, crashTagEnv+"=r"+strconv.Itoa(round))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		var got int
		ack := func(line string) {
			seqText, agent, ok := strings.Cut(line, " ")
			seq, err := strconv.ParseUint(seqText, 10, 64)
			if !ok || err != nil {
				return // a line cut short by the kill
			}
			acked[seq] = agent
			got++
		}
		// Wait for the child to get going, then kill it at a random moment.
		select {
		case l, ok := <-lines:
			if ok {
				ack(l)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: child made no append in 30s: %s", round, stderr.String())
		}
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for line := range lines {
			ack(line)
		}
		_ = cmd.Wait()
		if strings.Contains(stderr.String(), "append:") {
			t.Fatalf("round %d: child failed to append: %s", round, stderr.String())
		}

		// Reopen, as the next start would, and check.
		st, err := sqlite.Open(ctx, db, sqlite.Options{})
		if err != nil {
			t.Fatalf("round %d: reopening: %v", round, err)
		}
		if _, err := audit.NewLog(ctx, st, audit.Options{Namespace: "crash", Verifier: verifier, Origin: "crash-test"}); err != nil {
			t.Fatalf("round %d: the log does not resume: %v", round, err)
		}
		res, err := audit.Verify(ctx, st, audit.VerifyOptions{Verifier: verifier})
		if err != nil {
			t.Fatalf("round %d: verify after SIGKILL: %v", round, err)
		}
		stored := map[uint64]string{}
		err = st.Scan(ctx, 0, res.Records, func(e audit.Entry) error {
			r, err := audit.DecodeRecord(e.Data)
			stored[e.Seq] = r.Agent
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for seq, agent := range acked {
			if stored[seq] != agent {
				t.Fatalf("round %d: append of %s returned seq %d, but the log holds %q there", round, agent, seq, stored[seq])
			}
		}
		st.Close()
		t.Logf("round %d: %d appends acknowledged, log of %d records verifies (%d checkpoints)", round, got, res.Records, res.Checkpoints)
	}
}
