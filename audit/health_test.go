package audit_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
)

// manualClock is a clock a test moves.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logLines is a slog logger's output, one JSON object a line.
type logLines struct{ syncbuf.Buffer }

func (b *logLines) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(b, nil)) }

// take returns the lines written since the last take.
func (b *logLines) take(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range b.TakeLines() {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// wantLine checks that line has level and msg, and each of attrs; a
// string attr matches if the line's value contains it.
func wantLine(t *testing.T, line map[string]any, level, msg string, attrs map[string]any) {
	t.Helper()
	if line["level"] != level || !strings.HasPrefix(line["msg"].(string), msg) {
		t.Errorf("log line %v, want level %s and message %q", line, level, msg)
	}
	for k, v := range attrs {
		s, isString := v.(string)
		switch got := line[k]; {
		case isString:
			if gs, ok := got.(string); !ok || !strings.Contains(gs, s) {
				t.Errorf("log line %v: %s = %v, want it to contain %q", line, k, got, s)
			}
		case got != v:
			t.Errorf("log line %v: %s = %v, want %v", line, k, got, v)
		}
	}
}

// summaries checks that lines are summaries of a failure that persists,
// naming its cause and when it began, and returns how many failures they
// count.
func summaries(t *testing.T, lines []map[string]any, msg, cause string, since time.Time) int {
	t.Helper()
	n := 0
	for _, l := range lines {
		wantLine(t, l, "WARN", msg, map[string]any{"error": cause})
		if got, _ := time.Parse(time.RFC3339Nano, l["since"].(string)); !got.Equal(since) {
			t.Errorf("log line %v: since = %v, want the first failure, %v", l, got, since)
		}
		f, _ := l["failed"].(float64)
		n += int(f)
	}
	return n
}

// A store whose appends fail: one line when the log fails, with the
// cause; while it stays failed, summaries at most every
// FailureReportInterval however many appends fail; one line when it
// recovers. Err names the cause throughout.
func TestAppendFailuresLogged(t *testing.T) {
	const failures, step = 6000, 10 * time.Millisecond // a minute of denials
	clock := &manualClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var out logLines
	s := &faultyStore{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{Namespace: "app", Clock: clock.Now, Logger: out.logger()})
	ctx := t.Context()
	logEvents(t, l, 2)
	if lines := out.take(t); len(lines) != 0 {
		t.Fatalf("a healthy log wrote %v", lines)
	}

	errDisk := errors.New("disk full")
	s.fail(errDisk)
	firstFailure := clock.Now().Add(step)
	for range failures {
		clock.Advance(step)
		if _, err := l.Log(ctx, audit.Record{Event: "e"}); !errors.Is(err, errDisk) {
			t.Fatalf("Log with a failing store: %v", err)
		}
	}
	if err := l.Err(); !errors.Is(err, audit.ErrUnavailable) || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Err = %v, want it to name the cause", err)
	}
	lines := out.take(t)
	if len(lines) == 0 {
		t.Fatal("6000 failed appends wrote no line")
	}
	wantLine(t, lines[0], "ERROR", "audit: append failed; the log is unavailable until an append succeeds",
		map[string]any{"error": "disk full"})
	maxSummaries := int(failures * step / audit.FailureReportInterval)
	if got := len(lines) - 1; got < maxSummaries-1 || got > maxSummaries {
		t.Errorf("%d failed appends over %v wrote %d summaries, want about one every %v (%d)",
			failures, failures*step, got, audit.FailureReportInterval, maxSummaries)
	}
	counted := summaries(t, lines[1:], "audit: appends still failing", "disk full", firstFailure)
	if counted < failures-1-int(audit.FailureReportInterval/step) || counted > failures-1 {
		t.Errorf("summaries count %d failed appends, want the %d after the first, less those since the last summary", counted, failures-1)
	}

	s.fail(nil)
	logEvents(t, l, 1)
	if err := l.Err(); err != nil {
		t.Errorf("Err after the store recovered = %v", err)
	}
	lines = out.take(t)
	if len(lines) != 1 {
		t.Fatalf("recovery wrote %d lines, want 1: %v", len(lines), lines)
	}
	wantLine(t, lines[0], "INFO", "audit: appends recovered", map[string]any{"failed": float64(failures)})
	logEvents(t, l, 3)
	if lines := out.take(t); len(lines) != 0 {
		t.Errorf("a recovered log wrote %v", lines)
	}

	// A new failure is reported afresh.
	s.fail(errors.New("I/O error"))
	for range 3 {
		_, _ = l.Log(ctx, audit.Record{Event: "e"})
	}
	lines = out.take(t)
	if len(lines) != 1 {
		t.Fatalf("a second failure wrote %d lines, want 1: %v", len(lines), lines)
	}
	wantLine(t, lines[0], "ERROR", "audit: append failed", map[string]any{"error": "I/O error"})
}

// A checkpoint directory removed while the log runs: records are stored,
// but the log is failed and says why, once and then in bounded
// summaries, until the directory is back.
func TestCheckpointFailuresLogged(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	clock := &manualClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var out logLines
	anchor := filepath.Join(t.TempDir(), "anchor")
	if err := os.Mkdir(anchor, 0o755); err != nil {
		t.Fatal(err)
	}
	l := newLog(t, audit.NewMemoryStore(), audit.Options{Signer: signer, Verifier: verifier, Clock: clock.Now,
		CheckpointEvery: 2, CheckpointInterval: -1, CheckpointFile: anchor + string(filepath.Separator), Logger: out.logger()})
	logEvents(t, l, 2)
	if _, err := os.Stat(filepath.Join(anchor, "2")); err != nil {
		t.Fatalf("the first checkpoint is not in the directory: %v", err)
	}
	if err := os.Remove(filepath.Join(anchor, "2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(anchor, "latest")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(anchor); err != nil {
		t.Fatal(err)
	}

	const appends, step = 3000, 20 * time.Millisecond
	// With a checkpoint every 2 records, the second record is the first
	// whose checkpoint fails.
	firstFailure := clock.Now().Add(2 * step)
	for range appends {
		clock.Advance(step)
		logEvents(t, l, 1) // the records are stored
	}
	err := l.Err()
	if !errors.Is(err, audit.ErrUnavailable) || !strings.Contains(err.Error(), "writing checkpoint to "+anchor) {
		t.Errorf("Err = %v, want the checkpoint file's failure naming %s", err, anchor)
	}
	lines := out.take(t)
	if len(lines) == 0 {
		t.Fatal("failing checkpoints wrote no line")
	}
	wantLine(t, lines[0], "ERROR", "audit: checkpoint failed; the log is unavailable until a checkpoint is signed, stored and written",
		map[string]any{"error": anchor, "unanchored": float64(2)})
	maxSummaries := int(appends * step / audit.FailureReportInterval)
	if got := len(lines) - 1; got < 1 || got > maxSummaries {
		t.Errorf("%d appends with failing checkpoints over %v wrote %d summaries, want at most one every %v (%d)",
			appends, appends*step, got, audit.FailureReportInterval, maxSummaries)
	}
	summaries(t, lines[1:], "audit: checkpoints still failing", anchor, firstFailure)

	if err := os.Mkdir(anchor, 0o755); err != nil {
		t.Fatal(err)
	}
	logEvents(t, l, 1)
	if err := l.Err(); err != nil {
		t.Errorf("Err once the directory is back = %v", err)
	}
	lines = out.take(t)
	if len(lines) != 1 {
		t.Fatalf("recovery wrote %d lines, want 1: %v", len(lines), lines)
	}
	wantLine(t, lines[0], "INFO", "audit: checkpoints recovered", map[string]any{"size": float64(appends + 3)})
	if _, err := os.Stat(filepath.Join(anchor, "latest")); err != nil {
		t.Errorf("no latest checkpoint once the directory is back: %v", err)
	}
}

// NewLog refuses a checkpoint destination it could not write, naming it
// and the cause.
func TestNewLogChecksCheckpointFile(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sep := string(filepath.Separator)
	tests := []struct{ path, want string }{
		{filepath.Join(dir, "missing") + sep, "checkpoint directory " + filepath.Join(dir, "missing") + sep + " does not exist: create it"},
		{filepath.Join(dir, "missing", "cp"), "its directory " + filepath.Join(dir, "missing") + " does not exist: create it"},
		{file + sep, "checkpoint directory " + file + sep + ": "},
		{filepath.Join(file, "cp"), "checkpoint file: "},
	}
	if ro := unwritableDir(t); ro != "" {
		tests = append(tests,
			struct{ path, want string }{ro, "checkpoint directory " + ro + " is not writable"},
			struct{ path, want string }{filepath.Join(ro, "cp"), "its directory " + ro + " is not writable"})
	}
	for _, tt := range tests {
		l, err := audit.NewLog(t.Context(), audit.NewMemoryStore(),
			audit.Options{Signer: signer, Verifier: verifier, CheckpointFile: tt.path})
		if err == nil {
			l.Close()
			t.Errorf("NewLog with CheckpointFile %s succeeded, want an error", tt.path)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewLog with CheckpointFile %s: %v, want an error containing %q", tt.path, err, tt.want)
		}
		if cerr := audit.CheckCheckpointFile(tt.path); cerr == nil || !strings.Contains(cerr.Error(), tt.want) {
			t.Errorf("CheckCheckpointFile(%s) = %v, want an error containing %q", tt.path, cerr, tt.want)
		}
	}
	for _, p := range []string{dir, dir + sep, filepath.Join(dir, "cp"), file} {
		if err := audit.CheckCheckpointFile(p); err != nil {
			t.Errorf("CheckCheckpointFile(%s) = %v, want nil", p, err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("checking left files behind: %v", entries)
	}
}

// unwritableDir returns a directory no file can be created in: a
// read-only one, or for root, whom permissions don't stop, /sys; or ""
// if there is none.
func unwritableDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "read-only")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, "/sys"} {
		f, err := os.CreateTemp(d, "probe")
		if err != nil {
			if fi, serr := os.Stat(d); serr == nil && fi.IsDir() {
				return d
			}
			continue
		}
		f.Close()
		os.Remove(f.Name())
	}
	t.Log("found no directory this user can't write")
	return ""
}
