package adversarial

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the attacker's own connection to the database

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
	"github.com/agentsec/agentsec/trust"
)

// The third attacker: a process that can write the SQLite database
// behind a running gateway, ignoring its lock. It appends a record of its
// own: the gateway notices when it next commits to the database, moments
// later, rather than fork the log; every call is then denied before it
// runs (fail closed), and verification names the record that isn't the
// log's. It edits a record the log
// holds: verification names that one.
func TestDatabaseWriterBehindTheGateway(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.db")
	key, _, err := audit.GenerateKey("adversarial")
	if err != nil {
		t.Fatal(err)
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{ToolName: "fs.read", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "agent", Level: "public"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 100},
		AuditNamespace: "adversarial",
		Audit:          agentsec.AuditConfig{Path: path, SignerKey: key},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	req := agentsec.Request{Agent: "agent", Session: "s", Tool: "fs.read"}
	ran := 0
	tool := func(context.Context) (int64, error) { ran++; return 1, nil }
	for range 3 {
		if err := stack.Guard(ctx, req, tool); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stack.Audit.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	// A second writer through the store is refused outright.
	if _, err := sqlite.Open(ctx, path, sqlite.Options{}); !errors.As(err, new(*sqlite.InUseError)) {
		t.Errorf("a second writer: %v, want an *sqlite.InUseError", err)
	}
	// The attacker writes the file itself: a copy of the last record, as
	// the next one, once the gateway has committed its records there.
	if err := stack.Audit.Store().(*sqlite.Store).Flush(ctx); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO audit_records (seq, data, hashes)
		SELECT seq + 1, data, hashes FROM audit_records ORDER BY seq DESC LIMIT 1`); err != nil {
		t.Fatal(err)
	}
	// The gateway's appends are durable in its record log first; the
	// forged row is found when they are committed to the database, moments
	// later. From then on the log is failed, and calls are denied before
	// they run. Until then each call that ran had its record appended.
	before := ran
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := stack.Guard(ctx, req, tool)
		if errors.Is(err, agentsec.ErrAuditUnavailable) {
			break
		}
		if err != nil {
			t.Fatalf("a call after the foreign append: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls after the foreign append were allowed; the gateway never noticed it", ran-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	failedAt := ran
	for range 3 {
		if err := stack.Guard(ctx, req, tool); !errors.Is(err, agentsec.ErrAuditUnavailable) {
			t.Fatalf("a call while the log is failed: %v, want %v", err, agentsec.ErrAuditUnavailable)
		}
	}
	if ran > failedAt+1 {
		t.Errorf("%d calls ran after the log failed, want at most the one whose record failed", ran-failedAt)
	}
	// An outside verifier, reading the file as the CLI does, names the
	// forged record.
	reader, err := sqlite.Open(ctx, path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	verify := func() error {
		_, err := audit.Verify(ctx, reader, audit.VerifyOptions{Verifier: stack.Audit.Verifier()})
		return err
	}
	if err := verify(); err == nil {
		t.Error("the log verifies with a record the gateway never wrote")
	} else if ve, ok := errors.AsType[*audit.VerifyError](err); !ok || ve.Seq != 4 {
		t.Errorf("verify: %v, want it to name record 4 (records 0 to 3 are the assignment and the three calls)", err)
	}

	// Editing a record the log holds is found too.
	if _, err := db.ExecContext(ctx, `DELETE FROM audit_records WHERE seq = 4`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE audit_records SET data = CAST(replace(CAST(data AS TEXT), 'fs.read', 'fs.redd') AS BLOB) WHERE seq = 1`); err != nil {
		t.Fatal(err)
	}
	if err := verify(); err == nil {
		t.Error("the log verifies with an edited record")
	} else if ve, ok := errors.AsType[*audit.VerifyError](err); !ok || ve.Seq != 1 {
		t.Errorf("verify: %v, want it to name record 1", err)
	}
}
