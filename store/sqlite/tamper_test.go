package sqlite_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/store/sqlite"
)

// signedLog is a real SQLite audit log of 100 records with a checkpoint
// after every 10, and the key that signed it.
type signedLog struct {
	path     string
	signer   note.Signer
	verifier note.Verifier
	latest   []byte // the last signed checkpoint, as a user would keep it
}

func newSignedLog(t *testing.T) *signedLog {
	t.Helper()
	ctx := context.Background()
	skey, _, err := audit.GenerateKey("tamper-test")
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "app", Signer: signer, Verifier: verifier,
		CheckpointEvery: 10, CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		_, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: fmt.Sprintf("agent-%d", i%7),
			Session: fmt.Sprintf("s-%d", i%3), Tool: "fs.read", Scope: "team", Outcome: audit.OutcomeAllowed,
			Reason: "assigned level meets the required level", RequiredLevel: "public", AssignedLevel: "verified",
			Tokens: int64(10 + i), Attrs: map[string]string{"client": "ide"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	latest, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return &signedLog{path: path, signer: signer, verifier: verifier, latest: latest}
}

// exec runs SQL statements on the database file directly, as someone with
// access to the host could.
func (s *signedLog) exec(t *testing.T, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range stmts {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
}

// removeRecordLog removes the store's record log, the durable copy of
// its latest appends, as someone with access to the host could.
func (s *signedLog) removeRecordLog(t *testing.T) {
	t.Helper()
	if err := os.RemoveAll(s.path + "-segments"); err != nil {
		t.Fatal(err)
	}
}

// size returns the number of records in the database.
func (s *signedLog) size(t *testing.T) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM audit_records`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *signedLog) data(t *testing.T, seq int) []byte {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var data []byte
	if err := db.QueryRow(`SELECT data FROM audit_records WHERE seq = ?`, seq).Scan(&data); err != nil {
		t.Fatal(err)
	}
	return data
}

func (s *signedLog) setData(t *testing.T, seq int, data []byte) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE audit_records SET data = ? WHERE seq = ?`, data, seq); err != nil {
		t.Fatal(err)
	}
}

func (s *signedLog) verify(t *testing.T, trusted ...[]byte) error {
	t.Helper()
	st, err := sqlite.Open(context.Background(), s.path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = audit.Verify(context.Background(), st, audit.VerifyOptions{Verifier: s.verifier, Trusted: trusted})
	return err
}

// wantRecord checks err names record seq.
func wantRecord(t *testing.T, err error, seq uint64, reason string) {
	t.Helper()
	var ve *audit.VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, audit.ErrVerify) {
		t.Fatalf("Verify = %v, want a *VerifyError naming record %d", err, seq)
	}
	if ve.Seq != seq || !strings.Contains(ve.Reason, reason) {
		t.Fatalf("Verify = %v, want record %d: …%s…", err, seq, reason)
	}
}

func TestUntouchedLogVerifies(t *testing.T) {
	s := newSignedLog(t)
	if err := s.verify(t, s.latest); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFindsEditedField(t *testing.T) {
	base := newSignedLog(t)
	const k = 37
	orig := base.data(t, k)
	// One byte inside each field's value of record k.
	for _, key := range []string{"agent", "assigned", "attrs", "event", "namespace", "outcome",
		"reason", "required", "scope", "session", "time", "tokens", "tool"} {
		t.Run(key, func(t *testing.T) {
			s := newSignedLog(t)
			data := bytes.Clone(s.data(t, k))
			i := bytes.Index(data, []byte(`"`+key+`":`))
			if i < 0 {
				t.Fatalf("record has no %q: %s", key, orig)
			}
			j := i + len(key) + 3
			for data[j] == '"' || data[j] == '{' {
				j++
			}
			if data[j] >= '0' && data[j] <= '8' {
				data[j]++
			} else if data[j] == '9' {
				data[j] = '8'
			} else {
				data[j] ^= 0x20 // flip a letter's case
			}
			s.setData(t, k, data)
			wantRecord(t, s.verify(t), k, "do not match its stored leaf hash")
		})
	}
}

func TestVerifyFindsDeletedRecord(t *testing.T) {
	t.Run("gap left", func(t *testing.T) {
		s := newSignedLog(t)
		s.exec(t, `DELETE FROM audit_records WHERE seq = 42`)
		wantRecord(t, s.verify(t), 42, "missing")
	})
	t.Run("later records moved up", func(t *testing.T) {
		s := newSignedLog(t)
		s.exec(t, `DELETE FROM audit_records WHERE seq = 42`,
			`UPDATE audit_records SET seq = -seq WHERE seq > 42`,
			`UPDATE audit_records SET seq = -seq - 1 WHERE seq < 0`)
		wantRecord(t, s.verify(t), 42, "")
	})
}

func TestVerifyFindsInsertedRecord(t *testing.T) {
	s := newSignedLog(t)
	forged := `{"agent":"agent-1","event":"tool.call","namespace":"app","outcome":"allow","session":"s-1","time":"2026-01-01T00:00:00.000000000Z","tool":"fs.write"}`
	s.exec(t,
		`UPDATE audit_records SET seq = -seq - 1 WHERE seq >= 42`,
		`UPDATE audit_records SET seq = -seq WHERE seq < 0`,
		`INSERT INTO audit_records (seq, data, hashes)
			SELECT 42, CAST('`+forged+`' AS BLOB), hashes FROM audit_records WHERE seq = 43`)
	wantRecord(t, s.verify(t), 42, "")
}

func TestVerifyFindsSwappedRecords(t *testing.T) {
	for _, k := range []int{42, 43} { // even and odd positions
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			s := newSignedLog(t)
			s.exec(t,
				fmt.Sprintf(`UPDATE audit_records SET seq = -1 WHERE seq = %d`, k),
				fmt.Sprintf(`UPDATE audit_records SET seq = %d WHERE seq = %d`, k, k+1),
				fmt.Sprintf(`UPDATE audit_records SET seq = %d WHERE seq = -1`, k+1))
			wantRecord(t, s.verify(t), uint64(k), "")
		})
	}
	t.Run("data only", func(t *testing.T) {
		s := newSignedLog(t)
		a, b := s.data(t, 42), s.data(t, 43)
		s.setData(t, 42, b)
		s.setData(t, 43, a)
		wantRecord(t, s.verify(t), 42, "do not match its stored leaf hash")
	})
}

func TestVerifyFindsTruncation(t *testing.T) {
	// Whoever cuts the database's last records must remove the record
	// log's copy of them as well, or the next Open puts them back.
	t.Run("the record log restores records cut from the database alone", func(t *testing.T) {
		s := newSignedLog(t)
		s.exec(t, `DELETE FROM audit_records WHERE seq >= 95`, `DELETE FROM audit_checkpoints WHERE size > 90`)
		if err := s.verify(t, s.latest); err != nil {
			t.Fatalf("Verify = %v, want the records replayed from the record log", err)
		}
		if n := s.size(t); n != 100 {
			t.Fatalf("the log holds %d records after the replay, want 100", n)
		}
	})
	t.Run("caught by the latest stored checkpoint", func(t *testing.T) {
		s := newSignedLog(t)
		s.exec(t, `DELETE FROM audit_records WHERE seq >= 95`)
		s.removeRecordLog(t)
		wantRecord(t, s.verify(t), 95, "records 95 to 99 were removed")
	})
	t.Run("checkpoints truncated too: caught by a kept checkpoint", func(t *testing.T) {
		s := newSignedLog(t)
		s.exec(t, `DELETE FROM audit_records WHERE seq >= 85`, `DELETE FROM audit_checkpoints WHERE size > 80`)
		s.removeRecordLog(t)
		if err := s.verify(t); err != nil {
			t.Fatalf("without a kept checkpoint the cut log looks whole, but Verify = %v", err)
		}
		wantRecord(t, s.verify(t, s.latest), 85, "records 85 to 99 were removed")
	})
}

func TestVerifyFindsLogResignedWithAnotherKey(t *testing.T) {
	s := newSignedLog(t)
	// Someone with the database but not the key rewrites the log and signs
	// it with a key of their own.
	other := newSignedLog(t)
	data, err := os.ReadFile(other.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.path + "-wal")
	os.Remove(s.path + "-shm")
	err = s.verify(t)
	var ce *audit.CheckpointError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `not signed by key "tamper-test"`) {
		t.Fatalf("Verify of a re-signed log = %v, want a checkpoint not signed by the log's key", err)
	}
}

func TestVerifyFindsCheckpointWithWrongRoot(t *testing.T) {
	s := newSignedLog(t)
	cp := audit.Checkpoint{Origin: "tamper-test", Size: 50, Root: audit.Hash{1, 2, 3}}
	signed, err := audit.SignCheckpoint(cp, s.signer)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit_checkpoints SET note = ? WHERE size = 50`, signed); err != nil {
		t.Fatal(err)
	}
	db.Close()
	wantRecord(t, s.verify(t), 40, "do not match the stored checkpoint")
}

func TestVerifyFindsRewrittenHashes(t *testing.T) {
	// Edit record 33 and recompute every tree hash so the rows agree: only
	// the signed checkpoints can tell, and Verify names the range since
	// the last checkpoint that still matches.
	s := newSignedLog(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, s.path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var entries []audit.Entry
	err = st.Scan(ctx, 0, 100, func(e audit.Entry) error {
		entries = append(entries, audit.Entry{Seq: e.Seq, Data: bytes.Clone(e.Data)})
		return nil
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	entries[33].Data = bytes.Replace(entries[33].Data, []byte(`"tokens":43`), []byte(`"tokens":44`), 1)
	db, err := sql.Open("sqlite", "file:"+s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	hashes := rebuildHashes(t, entries)
	for i, e := range entries {
		if _, err := db.Exec(`UPDATE audit_records SET data = ?, hashes = ? WHERE seq = ?`, e.Data, hashes[i], i); err != nil {
			t.Fatal(err)
		}
	}
	wantRecord(t, s.verify(t), 30, "a record from 30 to 39 was changed")
}

// rebuildHashes computes each record's stored tree hashes, as a forger
// who rewrites records would.
func rebuildHashes(t *testing.T, entries []audit.Entry) [][]byte {
	t.Helper()
	var tree audittest.Tree
	blobs := make([][]byte, len(entries))
	for i, e := range entries {
		for _, h := range tree.Add(e.Data).Hashes {
			blobs[i] = append(blobs[i], h[:]...)
		}
	}
	return blobs
}

// A record far past the log's end makes its size (MAX(seq)+1) beyond any
// log's: opening a log on the store, and verifying it, fail at once. (A
// size of 2^62+1 asked for the tree hash with the largest int64 as its
// index, whose split never ended: the log hung as it opened.)
func TestDamagedSizeIsRefused(t *testing.T) {
	s := newSignedLog(t)
	s.exec(t,
		`INSERT INTO audit_records SELECT 4611686018427387904, data, hashes FROM audit_records WHERE seq = 99`,
		`INSERT INTO audit_index SELECT 4611686018427387904, time, namespace, event, agent, session, tool, outcome FROM audit_index WHERE seq = 99`)
	done := make(chan [2]error, 1)
	go func() {
		var errs [2]error
		defer func() { done <- errs }()
		ctx := context.Background()
		st, err := sqlite.Open(ctx, s.path, sqlite.Options{})
		if err != nil {
			errs[0] = err // refused as it opens: as good
		} else {
			_, errs[0] = audit.NewLog(ctx, st, audit.Options{Namespace: "app", Verifier: s.verifier})
			st.Close()
		}
		errs[1] = s.verify(t)
	}()
	select {
	case errs := <-done:
		if errs[0] == nil || errs[1] == nil {
			t.Errorf("opening a log: %v; verifying: %v; want errors", errs[0], errs[1])
		}
		t.Logf("opening: %v; verifying: %v", errs[0], errs[1])
	case <-time.After(20 * time.Second):
		t.Fatal("opening or verifying the damaged log did not return")
	}
}
