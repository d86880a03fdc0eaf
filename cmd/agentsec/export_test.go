package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/tlog"
)

type exportLine struct {
	index  uint64
	hash   tlog.Hash
	record []byte
}

// parseExportLine parses a JSON line of export and checks that its leaf
// hash is that of its record bytes.
func parseExportLine(t *testing.T, line string) exportLine {
	t.Helper()
	var v struct {
		Index    *uint64         `json:"index"`
		LeafHash string          `json:"leaf_hash"`
		Record   json.RawMessage `json:"record"`
	}
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || v.Index == nil {
		t.Fatalf("export line %q: %v", line, err)
	}
	h, err := base64.StdEncoding.DecodeString(v.LeafHash)
	if err != nil || len(h) != len(tlog.Hash{}) {
		t.Fatalf("export line %q: leaf hash %q", line, v.LeafHash)
	}
	if tlog.RecordHash(v.Record) != tlog.Hash(h) {
		t.Errorf("record %d: leaf hash %s is not the hash of the record bytes", *v.Index, v.LeafHash)
	}
	return exportLine{*v.Index, tlog.Hash(h), v.Record}
}

// TestOutputThroughALink: -o naming a symbolic link writes the file it
// names — a checkpoint kept elsewhere, through a link, moves forward —
// keeps the link and the file's mode, and -o naming the audit database
// itself, or one of its files, is refused, the log intact.
func TestOutputThroughALink(t *testing.T) {
	dir := demoLog(t)
	db := filepath.Join(dir, "log.db")
	kept := filepath.Join(t.TempDir(), "kept.cp")
	if err := os.WriteFile(kept, []byte("old anchor\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "kept.cp")
	if err := os.Symlink(kept, link); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runExit(t, &Main{}, "audit", "checkpoint", "-db", db, "-o", link); code != 0 {
		t.Fatalf("checkpoint -o a link: exit %d: %s", code, stderr)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("%s is no longer a link: %v", link, err)
	}
	got, _ := os.ReadFile(kept)
	if fi, err := os.Stat(kept); !strings.Contains(string(got), "\n12\n") || err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("the file the link names: %q, mode %v: want the checkpoint, mode 0644", got, fi.Mode())
	}

	for _, out := range []string{db, db + "-wal", db + ".lock"} {
		code, _, stderr := runExit(t, &Main{}, "audit", "export", "-db", db, "-o", out)
		if code == 0 || !strings.Contains(stderr, "the audit log's own file") {
			t.Errorf("export -o %s: exit %d: %s, want refused", filepath.Base(out), code, stderr)
		}
	}
	if code, _, stderr := runExit(t, &Main{}, "audit", "verify", "-db", db, "-pubkey", filepath.Join(dir, "demo.pub")); code != 0 {
		t.Errorf("the log after the refused exports: verify exits %d: %s", code, stderr)
	}
}
