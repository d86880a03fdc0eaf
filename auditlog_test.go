package agentsec_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/store/sqlite"
	"github.com/agentsec/agentsec/trust"
)

// durableConfig is a Stack with a signed SQLite log in dir, checkpointing
// every 5 records to anchor.
func durableConfig(t *testing.T, dir, anchor string, logger *slog.Logger) agentsec.Config {
	t.Helper()
	skey, _, err := audit.GenerateKey("stack.test")
	if err != nil {
		t.Fatal(err)
	}
	return agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules:  []trust.Rule{{Tool: "read", Level: "public"}},
			Agents: []trust.Assignment{{Agent: "alice", Level: "public"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: 1 << 40},
		AuditNamespace: "test",
		Audit: agentsec.AuditConfig{Path: filepath.Join(dir, "audit.db"), SignerKey: skey,
			CheckpointFile: anchor, CheckpointEvery: 5, CheckpointInterval: -1, Logger: logger},
	}
}

// A checkpoint directory removed after start: calls are denied, the
// denial names the cause, and the logger says so once — not once per
// call — and again when the directory is back and calls go through.
func TestCheckpointDirectoryRemovedAfterStart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	anchor := filepath.Join(dir, "anchor")
	if err := os.Mkdir(anchor, 0o755); err != nil {
		t.Fatal(err)
	}
	var out syncbuf.Buffer
	stack, err := agentsec.New(durableConfig(t, dir, anchor+string(filepath.Separator),
		slog.New(slog.NewTextHandler(&out, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	req := agentsec.Request{Agent: "alice", Session: "s", Tool: "read"}
	ran := 0
	call := func() error {
		return stack.Guard(ctx, req, func(context.Context) (int64, error) { ran++; return 1, nil })
	}
	for range 3 {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(anchor); err != nil {
		t.Fatal(err)
	}

	var allowed, denied int
	var lastDenial error
	for range 500 {
		err := call()
		switch {
		case err == nil && denied == 0:
			allowed++
		case errors.Is(err, agentsec.ErrAuditUnavailable):
			denied++
			lastDenial = err
		default:
			t.Fatalf("call %d after the directory went: %v", allowed+denied+1, err)
		}
	}
	// The record that made the checkpoint due is stored; from the failed
	// checkpoint on, every call is denied before its tool runs.
	if allowed > 5 || denied < 495 || ran != 3+allowed {
		t.Errorf("after the directory went: %d calls allowed, %d denied, %d tools ran; want the log to fail within 5 records, and no denied tool to run",
			allowed, denied, ran)
	}
	if !strings.Contains(lastDenial.Error(), "audit log unavailable") {
		t.Errorf("denial = %v, want it to say the audit log is unavailable", lastDenial)
	}
	var de *agentsec.DeniedError
	if !errors.As(lastDenial, &de) || de.Cause == nil || !strings.Contains(de.Cause.Error(), anchor) {
		t.Errorf("denial %v: its cause should name %s", lastDenial, anchor)
	}
	if err := stack.Audit.Err(); err == nil || !strings.Contains(err.Error(), anchor) {
		t.Errorf("Audit.Err() = %v, want it to name %s", err, anchor)
	}
	lines := out.Lines()
	if len(lines) < 1 || len(lines) > 2 {
		t.Fatalf("500 denials logged %d lines, want the failure and at most a summary:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[0], "level=ERROR") || !strings.Contains(lines[0], "audit: checkpoint failed") || !strings.Contains(lines[0], anchor) {
		t.Errorf("first line = %s, want the checkpoint failure naming %s", lines[0], anchor)
	}

	if err := os.Mkdir(anchor, 0o755); err != nil {
		t.Fatal(err)
	}
	// The next denial is recorded, and its checkpoint succeeds.
	if err := call(); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Errorf("first call once the directory is back = %v, want the last denial", err)
	}
	if err := call(); err != nil {
		t.Errorf("call once the log recovered: %v", err)
	}
	lines = out.Lines()
	if last := lines[len(lines)-1]; !strings.Contains(last, "level=INFO") || !strings.Contains(last, "audit: checkpoints recovered") {
		t.Errorf("last line = %s, want the recovery", last)
	}
	t.Logf("the logger's lines:\n%s", strings.Join(lines, "\n"))
	// Nothing recorded was lost: one assignment and every call.
	if n, err := stack.Audit.Verify(ctx); err != nil || n != uint64(1+3+500+2) {
		t.Errorf("Verify = %d, %v; want %d records", n, err, 1+3+500+2)
	}
}

// The library refuses at start a checkpoint destination it can't write,
// before it creates the database.
func TestNewRefusesMissingCheckpointDirectory(t *testing.T) {
	dir := t.TempDir()
	anchor := filepath.Join(dir, "anchor") + string(filepath.Separator)
	_, err := agentsec.New(durableConfig(t, dir, anchor, nil))
	if err == nil || !strings.Contains(err.Error(), "checkpoint directory "+anchor+" does not exist") {
		t.Fatalf("New with a missing checkpoint directory = %v, want an error naming it", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New created the database before refusing: %v", err)
	}
}

// Two Stacks on one database: the second is refused, naming the first.
func TestSecondStackOnOneLogRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := durableConfig(t, dir, "", nil)
	first, err := agentsec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := agentsec.New(cfg)
	var inUse *sqlite.InUseError
	if !errors.As(err, &inUse) {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second New on one log = %v, want an *sqlite.InUseError", err)
	}
	if err := first.Guard(context.Background(), agentsec.Request{Agent: "alice", Session: "s", Tool: "read"},
		func(context.Context) (int64, error) { return 1, nil }); err != nil {
		t.Errorf("the first Stack after the second was refused: %v", err)
	}
}
