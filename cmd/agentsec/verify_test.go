package main

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" driver, to tamper with a log

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
)

// runExit runs agentsec in-process as main would and returns its exit code
// and output.
func runExit(t *testing.T, m *Main, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	m.Stdout, m.Stderr = &out, &errOut
	if m.Stdin == nil {
		m.Stdin = strings.NewReader("")
	}
	code = m.ExitCode(m.Run(context.Background(), args))
	return code, out.String(), errOut.String()
}

// demoLog makes a key pair and a log of 12 records, with checkpoints at 6
// and 12, in a new directory, and returns the directory.
func demoLog(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"keygen", "-name", "demo", "-dir", dir},
		{"demo", "-db", filepath.Join(dir, "log.db"), "-key", filepath.Join(dir, "demo.key")},
		{"audit", "checkpoint", "-db", filepath.Join(dir, "log.db"), "-o", filepath.Join(dir, "six.cp")},
		{"demo", "-db", filepath.Join(dir, "log.db"), "-key", filepath.Join(dir, "demo.key")},
		{"audit", "checkpoint", "-db", filepath.Join(dir, "log.db"), "-o", filepath.Join(dir, "twelve.cp")},
	} {
		if code, _, stderr := runExit(t, &Main{}, args...); code != 0 {
			t.Fatalf("agentsec %v: exit %d\n%s", args, code, stderr)
		}
	}
	return dir
}

// tamper runs SQL statements against the log's database, and removes
// the store's record log, which holds a durable copy of the latest
// records and would put records cut from the database back.
func tamper(t *testing.T, path string, fn func(db *sql.DB) error) {
	t.Helper()
	if err := os.RemoveAll(path + "-segments"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := fn(db); err != nil {
		t.Fatalf("tampering: %v", err)
	}
}

func execAll(stmts ...string) func(*sql.DB) error {
	return func(db *sql.DB) error {
		for _, s := range stmts {
			if _, err := db.Exec(s); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestVerifyTampered tampers with a real SQLite log in ways that must
// make agentsec audit verify fail, naming the record.
func TestVerifyTampered(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(db *sql.DB) error
		trusted []string // checkpoint files in the log's directory
		want    string   // in the error line
	}{{
		name:   "edit one byte, still canonical",
		tamper: execAll(`UPDATE audit_records SET data = CAST(replace(CAST(data AS TEXT), 'research-bot', 'research-bop') AS BLOB) WHERE seq = 3`),
		want:   "audit: record 3: the record's bytes do not match its stored leaf hash",
	}, {
		name:   "edit one byte, no longer canonical",
		tamper: execAll(`UPDATE audit_records SET data = CAST(' ' || substr(data, 2) AS BLOB) WHERE seq = 3`),
		want:   "audit: record 3: ",
	}, {
		name:   "edit the tokens",
		tamper: execAll(`UPDATE audit_records SET data = CAST(replace(CAST(data AS TEXT), '"tokens":5', '"tokens":6') AS BLOB) WHERE seq = 9`),
		want:   "audit: record 9: the record's bytes do not match its stored leaf hash",
	}, {
		name:   "delete a record",
		tamper: execAll(`DELETE FROM audit_records WHERE seq = 4`),
		want:   "audit: record 4: missing: the store skips from record 4 to 5",
	}, {
		name: "swap two records",
		tamper: execAll(
			`UPDATE audit_records SET seq = -1 WHERE seq = 7`,
			`UPDATE audit_records SET seq = 7 WHERE seq = 8`,
			`UPDATE audit_records SET seq = 8 WHERE seq = -1`),
		want: "audit: record 7: ",
	}, {
		name: "swap two records' bytes only",
		tamper: execAll(
			`UPDATE audit_records SET data = (SELECT data FROM audit_records WHERE seq = 2) WHERE seq = 1`),
		want: "audit: record 1: the record's bytes do not match its stored leaf hash",
	}, {
		name: "insert a record",
		tamper: func(db *sql.DB) error {
			// Shift records 5 on up by one, then put a copy of record 1
			// in the gap.
			return execAll(
				`UPDATE audit_records SET seq = -seq - 1 WHERE seq >= 5`,
				`UPDATE audit_records SET seq = -seq WHERE seq < 0`,
				`INSERT INTO audit_records SELECT 5, data, hashes FROM audit_records WHERE seq = 1`,
			)(db)
		},
		want: "audit: record 5: ",
	}, {
		name:   "truncate the last records",
		tamper: execAll(`DELETE FROM audit_records WHERE seq >= 10`),
		want:   "audit: record 10: missing: the log ends after 10 records, but the stored checkpoint covers 12: records 10 to 11 were removed",
	}, {
		name:    "truncate the last records and their checkpoint, caught by a kept one",
		tamper:  execAll(`DELETE FROM audit_records WHERE seq >= 10`, `DELETE FROM audit_checkpoints WHERE size > 10`),
		trusted: []string{"six.cp", "twelve.cp"},
		want:    "audit: record 10: missing: the log ends after 10 records, but the trusted twelve.cp checkpoint covers 12: records 10 to 11 were removed",
	}, {
		name:   "drop a checkpoint's signature",
		tamper: execAll(`UPDATE audit_checkpoints SET note = substr(note, 1, instr(note, X'0A0A')) WHERE size = 6`),
		want:   "audit: stored checkpoint of size 6: ",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Chdir(demoLog(t))
			db := "log.db"
			args := []string{"audit", "verify", "-db", db, "-pubkey", "demo.pub"}
			for _, cp := range tt.trusted {
				args = append(args, "-trusted", cp)
			}
			if code, stdout, stderr := runExit(t, &Main{}, args...); code != 0 {
				t.Fatalf("before tampering: exit %d\n%s%s", code, stdout, stderr)
			}
			tamper(t, db, tt.tamper)
			code, stdout, stderr := runExit(t, &Main{}, args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want none", stdout)
			}
			wantOneLine(t, stderr, tt.want)
		})
	}
}

// TestVerifyCheckpointWrongRoot replaces a stored checkpoint with one
// signed by the log's own key, of the right size but the wrong root: the
// records were rewritten and re-signed by whoever holds the key.
func TestVerifyCheckpointWrongRoot(t *testing.T) {
	dir := demoLog(t)
	key, err := os.ReadFile(filepath.Join(dir, "demo.key"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _, err := audit.NewSigner(strings.TrimSpace(string(key)))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := audit.SignCheckpoint(audit.Checkpoint{Origin: "demo", Size: 12, Root: audit.Hash{1, 2, 3}}, signer)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "log.db")
	tamper(t, db, func(db *sql.DB) error {
		_, err := db.Exec(`UPDATE audit_checkpoints SET note = ? WHERE size = 12`, forged)
		return err
	})
	code, _, stderr := runExit(t, &Main{}, "audit", "verify", "-db", db, "-pubkey", filepath.Join(dir, "demo.pub"))
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	wantOneLine(t, stderr, "audit: record 6: the first 12 records do not match the stored checkpoint signed at that size, and the first 6 do")
}

func wantOneLine(t *testing.T, stderr, want string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "agentsec: ") || !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr %q, want one line starting with %q", stderr, "agentsec: ")
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q, want it to contain %q", stderr, want)
	}
}

// TestVerifyProgress checks that verify reports progress on a terminal,
// on one line it clears afterwards, and not elsewhere.
func TestVerifyProgress(t *testing.T) {
	dir := demoLog(t)
	args := []string{"audit", "verify", "-db", filepath.Join(dir, "log.db"), "-pubkey", filepath.Join(dir, "demo.pub")}

	code, stdout, stderr := runExit(t, &Main{StderrTerminal: true}, args...)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	const line = "verifying: 12 of 12 records (100%)"
	if want := "\r" + line + "\r" + strings.Repeat(" ", len(line)) + "\r"; stderr != want {
		t.Errorf("stderr on a terminal %q, want %q", stderr, want)
	}
	if !strings.HasPrefix(stdout, "verified 12 records: ") {
		t.Errorf("stdout %q", stdout)
	}

	if _, _, stderr := runExit(t, &Main{}, args...); stderr != "" {
		t.Errorf("stderr off a terminal %q, want none", stderr)
	}
}

// TestVerifyLiveLog verifies a log while its writer has it open, with
// records its latest checkpoint does not cover yet, and a log with no
// checkpoint at all.
func TestVerifyLiveLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if code, _, stderr := runExit(t, &Main{}, "keygen", "-name", "live", "-dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	key, err := os.ReadFile(filepath.Join(dir, "live.key"))
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(strings.TrimSpace(string(key)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "live.db")
	store, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.NewLog(ctx, store, audit.Options{Namespace: "test", Signer: signer, Verifier: verifier, CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	appendN := func(n int) {
		for range n {
			if _, err := log.Log(ctx, audit.Record{Event: "tool.call", Agent: "a", Tool: "t", Outcome: audit.OutcomeAllowed}); err != nil {
				t.Fatal(err)
			}
		}
	}
	verify := []string{"audit", "verify", "-db", path, "-pubkey", filepath.Join(dir, "live.pub")}

	appendN(3)
	if err := store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runExit(t, &Main{}, verify...)
	if code != 1 {
		t.Errorf("verify without a checkpoint: exit %d, want 1", code)
	}
	wantOneLine(t, stderr, "no signed checkpoint covers any of the 3 records")

	if _, err := log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(2)
	// Other processes read what the writer has committed to the
	// database, which it does moments after each append; Flush does it
	// at once.
	if err := store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runExit(t, &Main{}, verify...)
	if code != 0 {
		t.Fatalf("verify: exit %d\n%s", code, stderr)
	}
	if want := "; 1 signed checkpoint matches, covering 3 records (2 newer records not yet covered)\n"; !strings.HasSuffix(stdout, want) {
		t.Errorf("verify: stdout %q, want it to end in %q", stdout, want)
	}
	// The CLI reads while the writer has the log open and keeps appending.
	code, stdout, _ = runExit(t, &Main{}, "audit", "query", "-db", path, "-format", "jsonl")
	if code != 0 || strings.Count(stdout, "\n") != 5 {
		t.Errorf("query: exit %d, %d lines, want 0 and 5:\n%s", code, strings.Count(stdout, "\n"), stdout)
	}
	appendN(1)
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = runExit(t, &Main{}, verify...)
	if want := "; 2 signed checkpoints match, the latest covers 6 records\n"; code != 0 || !strings.HasSuffix(stdout, want) {
		t.Errorf("verify after close: exit %d, stdout %q, want 0 and one ending in %q", code, stdout, want)
	}
}

// TestBadInputOneLine checks that bad input never gives more than one line
// on stderr.
func TestBadInputOneLine(t *testing.T) {
	dir := demoLog(t)
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not\na\ndatabase\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	db, pub := filepath.Join(dir, "log.db"), filepath.Join(dir, "demo.pub")
	// Exit 2 for a flag value the flag does not take, a usage error; 1
	// otherwise.
	for _, tt := range []struct {
		code int
		args []string
	}{
		{1, []string{"audit", "verify", "-db", junk, "-pubkey", pub}},
		{1, []string{"audit", "verify", "-db", db, "-pubkey", junk}},
		{1, []string{"audit", "verify", "-db", db, "-pubkey", pub, "-trusted", junk}},
		{1, []string{"audit", "verify", "-db", db, "-pubkey", pub, "-trusted", db}},
		{1, []string{"audit", "query", "-db", junk}},
		{2, []string{"audit", "query", "-db", db, "-since", "now"}},
		{2, []string{"audit", "export", "-db", db, "-format", "xml"}},
		{1, []string{"audit", "export", "-db", db, "-o", filepath.Join(dir, "missing", "out")}},
		{2, []string{"audit", "prove", "-db", db, "-record", "-5"}},
		{1, []string{"audit", "prove", "-db", db, "-record", "3", "-checkpoint", junk}},
		{1, []string{"audit", "prove", "-db", junk, "-record", "3"}},
		{1, []string{"audit", "checkpoint", "-db", junk}},
		{1, []string{"audit", "check-proof", "-pubkey", pub, junk}},
		{1, []string{"audit", "check-proof", "-pubkey", pub, db}},
		{1, []string{"audit", "check-proof", "-pubkey", junk, junk}},
		{1, []string{"audit", "check-proof", "-pubkey", pub, "-"}},
	} {
		args := tt.args
		code, stdout, stderr := runExit(t, &Main{}, args...)
		if code != tt.code || stdout != "" || !strings.HasPrefix(stderr, "agentsec: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("agentsec %q: exit %d, stdout %q, stderr %q; want %d, nothing and one agentsec: line", args, code, stdout, stderr, tt.code)
		}
	}
}

// TestExportLeafHashes checks that the leaf hash of each exported record
// is the one the log stored for it, recomputable from the exported bytes.
func TestExportLeafHashes(t *testing.T) {
	dir := demoLog(t)
	path := filepath.Join(dir, "log.db")
	code, stdout, stderr := runExit(t, &Main{}, "audit", "export", "-db", path, "-tool", "read_file")
	if code != 0 {
		t.Fatal(stderr)
	}
	ctx := context.Background()
	store, err := sqlite.Open(ctx, path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	stored := map[uint64]audit.Hash{}
	if err := store.Scan(ctx, 0, 12, func(e audit.Entry) error {
		stored[e.Seq] = e.Hashes[0]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("exported %d read_file records, want 6:\n%s", len(lines), stdout)
	}
	for _, line := range lines {
		got := parseExportLine(t, line)
		if got.hash != stored[got.index] {
			t.Errorf("record %d: exported leaf hash %x, stored %x", got.index, got.hash, stored[got.index])
		}
		if r, err := audit.DecodeRecord(got.record); err != nil || r.Tool != "read_file" {
			t.Errorf("record %d: %v, tool %q", got.index, err, r.Tool)
		}
	}
}

// TestVerifyEmptyCheckpointCoversNothing: a checkpoint of the empty log —
// signed by a stack that recorded nothing at start — vouches for no
// record (an empty tree's root is every log's), so a log whose records it
// alone "covers", forged by a writer of the database without the key,
// fails verification.
func TestVerifyEmptyCheckpointCoversNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := keygenIn(t, dir, "gw")
	db := filepath.Join(dir, "audit.db")
	// A stack whose agents are assigned at run time (or serve with only
	// operators): nothing is recorded at start; Close signs size 0.
	stack, err := agentsec.New(agentsec.Config{
		TrustGate:      agentsec.TrustGateConfig{Rules: nil},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10, CallLimit: 1},
		AuditNamespace: "gw",
		Audit:          agentsec.AuditConfig{Path: db, SignerKey: key},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.Close(); err != nil {
		t.Fatal(err)
	}
	// The attacker: no key, write access to the database.
	st, err := sqlite.Open(ctx, db, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: "forged", Tool: "rm", Outcome: audit.OutcomeAllowed}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	code, out, stderr := runExit(t, &Main{}, "audit", "verify", "-db", db, "-pubkey", filepath.Join(dir, "gw.pub"))
	if code != 1 {
		t.Errorf("verify exits %d for 3 records no signed checkpoint covers:\n%s", code, out)
	}
	wantOneLine(t, stderr, "no signed checkpoint covers any of the 3 records")
	if !strings.Contains(stderr, "examine them before anything signs them") {
		t.Errorf("the hint for records only an empty log's checkpoint covers: %q, want a warning not to sign them", stderr)
	}
}

// TestDemoListsItsOwnRecords: demo -db continues a log that may hold
// other records — an agent's, with a tool name of terminal escapes — and
// lists only the records of its own run, escaped as every command prints
// records.
func TestDemoListsItsOwnRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := keygenIn(t, dir, "demo")
	db := filepath.Join(dir, "audit.db")
	signer, verifier, err := audit.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, db, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "demo", Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: "bot", Tool: "x\x1b]0;owned\x07\x1b[2J",
		Outcome: audit.OutcomeDenied, Reason: "ok\rfake line\u202e"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	code, out, stderr := runExit(t, &Main{}, "demo", "-db", db, "-key", filepath.Join(dir, "demo.key"))
	if code != 0 {
		t.Fatalf("demo: exit %d: %s", code, stderr)
	}
	for _, bad := range []string{"\x1b", "\r", "\u202e", "owned"} {
		if strings.Contains(out, bad) {
			t.Errorf("demo printed the earlier record's %q", bad)
		}
	}
	if !regexp.MustCompile(`(?m)^Audit log \(6 records\):$`).MatchString(out) {
		t.Errorf("demo lists other than its run's 6 records:\n%s", out)
	}
}

// keygenIn makes a key pair NAME.key and NAME.pub in dir with agentsec
// keygen, and returns the signer key.
func keygenIn(t *testing.T, dir, name string) string {
	t.Helper()
	if code, _, stderr := runExit(t, &Main{}, "keygen", "-name", name, "-dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	key, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(key))
}
