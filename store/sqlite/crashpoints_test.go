package sqlite_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
	"golang.org/x/mod/sumdb/note"
)

// TestCrashAtEveryPoint kills a process that appends to the store, with
// SIGKILL, at chosen points of its appends: when a batch's frames are
// about to be written to the record log and synced, in one system call on
// Linux ("writing"), when they are synced but Append has not returned
// ("synced"), while the indexer's
// transaction holds rows it has not committed ("indexing"), just after it
// committed them ("indexed"), and when the record log starts a segment
// ("segment", the first time during Open). Each point is hit k times for
// several k, so the kill lands early and late, before and after segments
// are reused. The parent then reopens the store, which replays the record
// log, and checks that every append and checkpoint the child saw
// succeed is there, exactly; that the log verifies; and that queries,
// through the index the replay rebuilt, find exactly the records a full
// scan says match — then again after more appends and a clean reopen.
//
// A second series simulates a crash of the machine too: the child never
// checkpoints the database after it opened it (Open's own checkpoint
// completes before any of the points), so all its commits are in
// SQLite's write-ahead log, unsynced, and no checkpoint is half done; the
// parent deletes that file (and -shm) after the kill, which is what a
// machine crash may do to it, and the record log alone must bring back
// every append. There a second child follows the first before the
// parent looks: its Open replays the first one's records and must make
// them durable before it reuses their segments, for it too is killed and
// loses its write-ahead log.
const (
	cpDBEnv         = "AGENTSEC_CRASHPOINT_DB"
	cpKeyEnv        = "AGENTSEC_CRASHPOINT_KEY"
	cpPointEnv      = "AGENTSEC_CRASHPOINT_POINT"
	cpHitsEnv       = "AGENTSEC_CRASHPOINT_HITS"
	cpTagEnv        = "AGENTSEC_CRASHPOINT_TAG"
	cpCheckpointEnv = "AGENTSEC_CRASHPOINT_CHECKPOINT"

	// cpNotReached is what a child prints if the point was not hit k
	// times within cpWait.
	cpNotReached = "crashpoint-not-reached"
	// cpWait bounds a child's run. Every point and k below is normally
	// reached within a second, even under -race; the bound is generous
	// because the machine may be busy, and matters only on failure.
	cpWait = 10 * time.Second

	// cpPace is how long a writer of the child waits between appends,
	// and cpMaxTail how far the indexer may fall behind them, so that
	// the points are hit at a steady rate and a child appends a few
	// thousand records a second, not more.
	cpPace    = time.Millisecond
	cpMaxTail = 512

	cpSegmentSize = 16 << 10
	cpWriters     = 8
	cpTools       = 5
)

// cpAgent, cpSession and cpTool are the attributes the child gives the
// i'th record of writer w in round tag, so that queries can filter on
// each: agents and tools recur across rounds, sessions are the round's.
func cpAgent(w int) string                  { return fmt.Sprintf("agent-%d", w) }
func cpSession(tag string, w, i int) string { return fmt.Sprintf("%s-w%d-s%d", tag, w, i/16) }
func cpTool(w, i int) string                { return fmt.Sprintf("tool-%d", (w+i)%cpTools) }

func TestCrashPointChild(t *testing.T) {
	db := os.Getenv(cpDBEnv)
	if db == "" {
		t.Skip("runs only as TestCrashAtEveryPoint's child process")
	}
	point, tag := os.Getenv(cpPointEnv), os.Getenv(cpTagEnv)
	k, err := strconv.ParseInt(os.Getenv(cpHitsEnv), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	checkpointRecords, err := strconv.Atoi(os.Getenv(cpCheckpointEnv))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	signer, verifier, err := audit.NewSigner(os.Getenv(cpKeyEnv))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush() // one line, one write: a kill cuts no line short
		mu.Unlock()
	}
	// Set before Open: "segment" is first hit there.
	// Records wait in the tail 20 ms at most, so that the indexer's
	// points come often.
	defer sqlite.SetSegmentSize(cpSegmentSize, checkpointRecords, 20*time.Millisecond)()
	var hits atomic.Int64
	defer sqlite.SetTestHook(func(p string) {
		if p == point && hits.Add(1) == k {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // no more of this goroutine's work gets done
		}
	})()
	time.AfterFunc(cpWait, func() {
		say("%s %d", cpNotReached, hits.Load())
		os.Exit(0)
	})

	st, err := sqlite.Open(ctx, db, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "crashpoints", Signer: signer, Verifier: verifier,
		CheckpointEvery: 16, CheckpointInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The writers wait while the indexer is more than cpMaxTail records
	// behind, as a read-only Store sees the database: under the race
	// detector SQLite slows more than the appends, and a tail that grows
	// makes the indexer's points come ever more slowly.
	ro, err := sqlite.Open(ctx, db, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	waitForIndexer := func() {
		for {
			indexed, err := ro.Size(ctx)
			if err != nil {
				fmt.Fprintln(os.Stderr, "append: reading the database's size:", err)
				os.Exit(3)
			}
			if l.Size() < indexed+cpMaxTail {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	for w := range cpWriters {
		wg.Go(func() {
			for i := 0; ; i++ {
				if i%8 == 0 {
					waitForIndexer()
				}
				agent, session, tool := cpAgent(w), cpSession(tag, w, i), cpTool(w, i)
				rec, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: agent, Session: session, Tool: tool,
					Outcome: []audit.Outcome{audit.OutcomeAllowed, audit.OutcomeDenied}[i%3/2], Tokens: int64(i)})
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(3)
				}
				say("%d %s %s %s", rec.Seq, agent, session, tool)
				time.Sleep(cpPace)
			}
		})
	}
	// Checkpoints the child saw stored: each must survive too.
	wg.Go(func() {
		for {
			signed, err := l.Checkpoint(ctx)
			if err != nil {
				fmt.Fprintln(os.Stderr, "append: checkpoint:", err)
				os.Exit(3)
			}
			c, err := audit.OpenCheckpoint(signed, verifier)
			if err != nil {
				fmt.Fprintln(os.Stderr, "append: checkpoint:", err)
				os.Exit(3)
			}
			say("checkpoint %d", c.Size)
			time.Sleep(2 * time.Millisecond)
		}
	})
	wg.Wait()
}

// cpRecord is what the parent knows of a record: its attributes.
type cpRecord struct{ agent, session, tool string }

func TestCrashAtEveryPoint(t *testing.T) {
	ks := map[string][]int{
		"writing": {1, 7, 50, 300},
		"synced":  {1, 7, 50, 300},
		// The indexer commits every 64 records or 20ms.
		"indexing": {1, 7, 20, 45},
		"indexed":  {1, 7, 20, 45},
		// The first hit is in Open, before any append; a segment holds
		// about 50 records, so the 12th and 40th come after reuse began.
		"segment": {1, 3, 12, 40},
	}
	walKs := map[string][]int{"indexing": {5}, "indexed": {20}, "segment": {4}}
	if testing.Short() {
		ks = map[string][]int{"writing": {7}, "synced": {7}, "indexing": {7}, "indexed": {7}, "segment": {12}}
		walKs = map[string][]int{"indexed": {20}}
	}
	skey, _, err := audit.GenerateKey("crashpoints")
	if err != nil {
		t.Fatal(err)
	}
	_, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var replayed, acked int
	series := func(points map[string][]int, dropWAL bool) {
		for _, point := range []string{"writing", "synced", "indexing", "indexed", "segment"} {
			if len(points[point]) == 0 {
				continue
			}
			// One database per point: its later rounds start from
			// what the earlier ones left.
			c := &cpChecker{t: t, db: filepath.Join(dir, fmt.Sprintf("%s-wal%v.db", point, dropWAL)), skey: skey,
				verifier: verifier, dropWAL: dropWAL, acked: map[uint64]cpRecord{}, checkpoints: map[uint64]bool{}}
			for _, k := range points[point] {
				a, r := c.round(point, k)
				acked, replayed = acked+a, replayed+r
				if t.Failed() {
					return
				}
			}
		}
	}
	series(ks, false)
	series(walKs, true)
	// The test means something only if the record log had to bring back
	// acknowledged records the database lacked.
	if !t.Failed() && replayed == 0 {
		t.Errorf("of %d acknowledged records, none was missing from the database after a kill: the replay went untested", acked)
	}
	t.Logf("%d acknowledged records, %d of them only in the record log when the child died", acked, replayed)
}

// cpChecker runs the children of one point, one database, and checks it.
type cpChecker struct {
	t        *testing.T
	db       string
	skey     string
	verifier note.Verifier
	// dropWAL runs the children without database checkpoints after
	// Open's, and deletes the database's write-ahead log after each is
	// killed.
	dropWAL     bool
	acked       map[uint64]cpRecord // every record appended with success, by seq
	checkpoints map[uint64]bool     // every checkpoint stored with success, by size
}

// round kills a child at the k'th hit of point and checks the database;
// it returns how many records the child acknowledged and how many of
// those the database lacked when it died.
//
// With dropWAL, a second child follows the first before the parent
// checks: its Open replays what the first one left, and it is killed in
// turn, so a replay that was not made durable before the record log's
// segments were reused is lost with the write-ahead log.
func (c *cpChecker) round(point string, k int) (acked, replayed int) {
	t := c.t
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	name := fmt.Sprintf("%s k=%d", point, k)
	if c.dropWAL {
		name += " (machine crash: write-ahead log dropped)"
	}
	tag := fmt.Sprintf("%s-k%d-wal%v", point, k, c.dropWAL)
	children := 1
	if c.dropWAL {
		children = 2
	}
	for i := range children {
		seqs := c.runChild(name, fmt.Sprintf("%s-%d", tag, i), point, k)
		if c.dropWAL {
			for _, suffix := range []string{"-wal", "-shm"} {
				if err := os.Remove(c.db + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
			}
		}
		// What the database holds as the child left it: the
		// acknowledged records it lacks are the ones only the record log
		// can bring back.
		inDB := c.rawSize(name)
		for _, seq := range seqs {
			if seq >= inDB {
				replayed++
			}
		}
		acked += len(seqs)
	}
	childTime := time.Since(start)

	// Reopen, which replays the record log, and check.
	st, err := sqlite.Open(ctx, c.db, sqlite.Options{})
	if err != nil {
		t.Fatalf("%s: reopening: %v", name, err)
	}
	closed := false
	defer func() {
		if !closed {
			st.Close()
		}
	}()
	c.check(name+", reopened", st, true)
	signer, verifier, err := audit.NewSigner(c.skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "crashpoints", Signer: signer, Verifier: verifier,
		CheckpointEvery: 16, CheckpointInterval: -1})
	if err != nil {
		t.Fatalf("%s: the log does not resume: %v", name, err)
	}
	// A few more records, in sessions of the parent's own, then a clean
	// close and reopen.
	for i := range 40 {
		w := i % cpWriters
		r := audit.Record{Event: "tool.call", Agent: cpAgent(w), Session: cpSession("parent-"+tag, w, i),
			Tool: cpTool(w, i), Outcome: audit.OutcomeAllowed}
		rec, err := l.Log(ctx, r)
		if err != nil {
			t.Fatalf("%s: appending after the reopen: %v", name, err)
		}
		if _, dup := c.acked[rec.Seq]; dup {
			t.Fatalf("%s: append after the reopen returned seq %d, which a child's append had", name, rec.Seq)
		}
		c.acked[rec.Seq] = cpRecord{r.Agent, r.Session, r.Tool}
	}
	c.check(name+", reopened and appended to", st, false) // verified after the reopen below
	closed = true
	if err := l.Close(); err != nil { // closes st
		t.Fatalf("%s: closing: %v", name, err)
	}
	if st, err = sqlite.Open(ctx, c.db, sqlite.Options{}); err != nil {
		t.Fatalf("%s: reopening after a clean close: %v", name, err)
	}
	closed = false
	c.check(name+", closed and reopened", st, true)
	if testing.Verbose() {
		segs, _ := filepath.Glob(filepath.Join(c.db+"-segments", "*.seg"))
		t.Logf("%s: %d appends acknowledged, %d of them only in the record log; %d records, %d segment files; children %v, checks %v",
			name, acked, replayed, len(c.acked), len(segs), childTime.Round(time.Millisecond), (time.Since(start) - childTime).Round(time.Millisecond))
	}
	return acked, replayed
}

// runChild runs a child that appends to the database until the k'th hit
// of point kills it, and returns the seqs of the appends it saw succeed.
func (c *cpChecker) runChild(name, tag, point string, k int) []uint64 {
	t := c.t
	t.Helper()
	checkpointRecords := 200
	if c.dropWAL {
		// Never checkpoint the database after Open's own checkpoint: the
		// child's commits stay in the write-ahead log, unsynced, and
		// deleting it is what a machine crash may do to them. (So no
		// checkpoint of the database is half done when it is dropped.)
		checkpointRecords = 1 << 30
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashPointChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), cpDBEnv+"="+c.db, cpKeyEnv+"="+c.skey, cpPointEnv+"="+point,
		cpHitsEnv+"="+strconv.Itoa(k), cpTagEnv+"="+tag, cpCheckpointEnv+"="+strconv.Itoa(checkpointRecords))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var exit *exec.ExitError
	killed := errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	if err != nil && !killed {
		t.Fatalf("%s: child: %v\nstdout (end): %s\nstderr: %s", name, err, cpLast(string(stdout), 2000), stderr.String())
	}
	reached := true
	var seqs []uint64
	for line := range strings.Lines(string(stdout)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == cpNotReached:
			// Not expected for any point and k here: "segment" is hit
			// in Open and every ~50 records, the others by every append
			// or every 64 records or 20ms, and a child appends
			// thousands of records a second.
			reached = false
			t.Errorf("%s: the child did not reach the point in %v (hit it %s times)", name, cpWait, f[1])
		case len(f) == 2 && f[0] == "checkpoint":
			size, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: child printed %q", name, line)
			}
			c.checkpoints[size] = true
		case len(f) == 4:
			seq, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				t.Fatalf("%s: child printed %q", name, line)
			}
			if _, dup := c.acked[seq]; dup {
				t.Fatalf("%s: appends in two processes both returned seq %d", name, seq)
			}
			c.acked[seq] = cpRecord{f[1], f[2], f[3]}
			seqs = append(seqs, seq)
		}
	}
	if reached && !killed {
		t.Fatalf("%s: the child exited by itself\nstderr: %s", name, stderr.String())
	}
	return seqs
}

// check checks that st holds every acknowledged record and checkpoint,
// that the log verifies, if verify is set, and that queries find exactly
// the records a scan finds.
func (c *cpChecker) check(stage string, st *sqlite.Store, verify bool) {
	t := c.t
	t.Helper()
	ctx := context.Background()
	size, err := st.Size(ctx)
	if err != nil {
		t.Fatalf("%s: %v", stage, err)
	}
	var all []audit.Record
	err = st.Scan(ctx, 0, size, func(e audit.Entry) error {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			return fmt.Errorf("record %d: %w", e.Seq, err)
		}
		if e.Seq != uint64(len(all)) {
			return fmt.Errorf("scan gave record %d after %d records", e.Seq, len(all))
		}
		r.Seq = e.Seq
		all = append(all, r)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: scanning: %v", stage, err)
	}
	if uint64(len(all)) != size {
		t.Fatalf("%s: scan gave %d records of %d", stage, len(all), size)
	}
	lost := 0
	for seq, want := range c.acked {
		var got cpRecord
		if seq < size {
			got = cpRecord{all[seq].Agent, all[seq].Session, all[seq].Tool}
		}
		if got != want {
			if lost++; lost <= 5 {
				t.Errorf("%s: append of %v returned seq %d, but the log holds %v there (size %d)", stage, want, seq, got, size)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%s: %d of %d acknowledged records lost", stage, lost, len(c.acked))
	}

	stored := map[uint64]bool{}
	if err := st.Checkpoints(ctx, func(size uint64, _ []byte) error { stored[size] = true; return nil }); err != nil {
		t.Fatalf("%s: reading checkpoints: %v", stage, err)
	}
	for size := range c.checkpoints {
		if !stored[size] {
			t.Fatalf("%s: the checkpoint of size %d was stored, but is lost (%d stored)", stage, size, len(stored))
		}
	}
	if verify {
		res, err := audit.Verify(ctx, st, audit.VerifyOptions{Verifier: c.verifier})
		if err != nil {
			t.Fatalf("%s: verify: %v", stage, err)
		}
		if res.Records != size {
			t.Fatalf("%s: verify checked %d records of %d", stage, res.Records, size)
		}
		if res.Checkpoints < len(stored) {
			t.Fatalf("%s: verify matched %d checkpoints of the %d stored", stage, res.Checkpoints, len(stored))
		}
	}

	// Queries: for agents, sessions, tools and combinations, including
	// the sessions of the newest records (the ones a replay restored),
	// exactly the records a scan says match, in order.
	filters := []audit.Filter{
		{Agent: cpAgent(3)},
		{Tool: cpTool(0, 2)},
		{Agent: cpAgent(5), Tool: cpTool(5, 1), Outcome: audit.OutcomeDenied},
		{Agent: "no-such-agent"},
	}
	seen := map[string]bool{}
	for _, i := range []int{0, len(all) / 2, len(all) - 41, len(all) - 20, len(all) - 1} {
		if i >= 0 && i < len(all) && !seen[all[i].Session] {
			seen[all[i].Session] = true
			filters = append(filters, audit.Filter{Session: all[i].Session}, audit.Filter{Session: all[i].Session, Tool: all[i].Tool})
		}
	}
	for _, f := range filters {
		var want []uint64
		for _, r := range all {
			if (f.Agent == "" || r.Agent == f.Agent) && (f.Session == "" || r.Session == f.Session) &&
				(f.Tool == "" || r.Tool == f.Tool) && (f.Outcome == "" || r.Outcome == f.Outcome) {
				want = append(want, r.Seq)
			}
		}
		var got []uint64
		f.Limit = 97 // several pages for the common values
		for {
			page, err := audit.Query(ctx, st, f)
			if err != nil {
				t.Fatalf("%s: query %s: %v", stage, cpFilter(f), err)
			}
			for _, r := range page.Records {
				got = append(got, r.Seq)
			}
			if f.Cursor = page.Next; f.Cursor == "" {
				break
			}
		}
		if !slices.Equal(got, want) {
			f.Cursor = ""
			t.Fatalf("%s: query %s found %d records, a scan %d: %s", stage, cpFilter(f), len(got), len(want), cpFirstDiff(got, want))
		}
	}
}

// rawSize returns how many records the database file (with its
// write-ahead log, if it has one) holds, read without the store, which
// would replay the record log.
func (c *cpChecker) rawSize(name string) uint64 {
	t := c.t
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: c.db}).EscapedPath()+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var size uint64
	if err := db.QueryRow(`SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_records`).Scan(&size); err != nil {
		t.Fatalf("%s: reading the database as the child left it: %v", name, err)
	}
	return size
}

func cpFilter(f audit.Filter) string {
	var b strings.Builder
	for _, kv := range [][2]string{{"agent", f.Agent}, {"session", f.Session}, {"tool", f.Tool}, {"outcome", string(f.Outcome)}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s=%s ", kv[0], kv[1])
		}
	}
	return strings.TrimSpace(b.String())
}

func cpFirstDiff(got, want []uint64) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at result %d, record %d, want %d", i, got[i], want[i])
		}
	}
	if len(got) < len(want) {
		return fmt.Sprintf("record %d missing at the end", want[len(got)])
	}
	return fmt.Sprintf("record %d extra at the end", got[len(want)])
}

func cpLast(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
