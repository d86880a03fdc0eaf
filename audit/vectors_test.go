package audit_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
)

// The test vectors in testdata/ pin the format docs/audit-format.md
// describes: records.jsonl holds each record's canonical bytes and leaf
// hash, tree.txt the tree hash at every size, and checkpoint a checkpoint
// signed with the test key in vectors.key (vectors.pub verifies it). Run
// with -update to write them anew; the test then fails, so a change of
// format can't pass unnoticed.
var update = flag.Bool("update", false, "rewrite the test vectors in testdata/")

func vectorRecords() []audit.Record {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)
	return []audit.Record{
		{Time: t0, Namespace: "vectors", Event: "trust.assign", Agent: "agent-7", AssignedLevel: "verified",
			Attrs: map[string]string{"source": "config"}},
		{Time: t0.Add(time.Second), Namespace: "vectors", Event: "tool.call", Agent: "agent-7", Session: "s-1",
			Tool: "file-reader", Outcome: audit.OutcomeAllowed, Reason: "assigned level meets the required level",
			RequiredLevel: "verified", AssignedLevel: "verified", Tokens: 42},
		{Time: t0.Add(2 * time.Second), Namespace: "vectors", Event: "tool.call", Agent: "agent-7", Session: "s-1",
			Tool: "shell.exec", Outcome: audit.OutcomeDenied, Reason: "assigned level is below the required level",
			RequiredLevel: "privileged", AssignedLevel: "verified"},
		{Time: t0.Add(3 * time.Second), Namespace: "vectors", Event: "tool.call", Agent: "ägent \"quoted\"\\",
			Session: "s-2", Tool: "fs.read", Scope: "team/a", Outcome: audit.OutcomeAllowed,
			Reason: "line\nbreak\ttab\x01", Tokens: 9_007_199_254_740_993,
			Attrs: map[string]string{"b": "2", "a": "1", "é": "ü"}},
		{Time: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), Event: "edge.min-time"},
		{Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), Event: "edge.max-time"},
		{Time: t0.Add(4 * time.Second), Namespace: "vectors", Event: "trust.revoke", Agent: "agent-7",
			Attrs: map[string]string{"source": "api"}},
	}
}

type vectorLine struct {
	Index    uint64          `json:"index"`
	LeafHash string          `json:"leaf_hash"`
	Record   json.RawMessage `json:"record"`
}

func TestVectors(t *testing.T) {
	dir := "testdata"
	recs := vectorRecords()
	var records bytes.Buffer
	var datas [][]byte
	for i, r := range recs {
		data, err := audit.EncodeRecord(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		datas = append(datas, data)
		leaf := tlog.RecordHash(data)
		fmt.Fprintf(&records, `{"index":%d,"leaf_hash":%q,"record":%s}`+"\n", i, base64.StdEncoding.EncodeToString(leaf[:]), data)
	}
	// Tree hashes, computed with tlog, independently of the audit package.
	var reader audittest.Tree
	var tree bytes.Buffer
	for n := 0; n <= len(datas); n++ {
		root, err := tlog.TreeHash(int64(n), &reader)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&tree, "%d %s\n", n, base64.StdEncoding.EncodeToString(root[:]))
		if n < len(datas) {
			reader.Add(datas[n])
		}
	}

	if *update {
		skey, vkey, err := audit.GenerateKey("vectors.agentsec.test")
		if err != nil {
			t.Fatal(err)
		}
		signer, _, err := audit.NewSigner(skey)
		if err != nil {
			t.Fatal(err)
		}
		root, _ := tlog.TreeHash(int64(len(datas)), &reader)
		cp, err := audit.SignCheckpoint(audit.Checkpoint{Origin: "vectors.agentsec.test", Size: uint64(len(datas)), Root: root}, signer)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{
			"records.jsonl": records.Bytes(), "tree.txt": tree.Bytes(), "checkpoint": cp,
			"vectors.key": []byte(skey + "\n"), "vectors.pub": []byte(vkey + "\n"),
		} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Fatal("test vectors rewritten; run again without -update")
	}

	for name, want := range map[string][]byte{"records.jsonl": records.Bytes(), "tree.txt": tree.Bytes()} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what the encoder and tree produce now:\ngot:\n%s\nwant:\n%s", name, got, want)
		}
	}

	// The stored vectors decode, and the audit package's own log produces
	// the same tree and verifies the stored checkpoint.
	f, err := os.Open(filepath.Join(dir, "records.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line vectorLine
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		// JSON round-tripping may reformat; take the record bytes from the line itself.
		raw := sc.Bytes()
		start := bytes.Index(raw, []byte(`"record":`)) + len(`"record":`)
		data := raw[start : len(raw)-1]
		if _, err := audit.DecodeRecord(data); err != nil {
			t.Errorf("vector %d does not decode: %v", line.Index, err)
		}
		leaf := tlog.RecordHash(data)
		if got := base64.StdEncoding.EncodeToString(leaf[:]); got != line.LeafHash {
			t.Errorf("vector %d leaf hash %s, file says %s", line.Index, got, line.LeafHash)
		}
	}
	vkey, err := os.ReadFile(filepath.Join(dir, "vectors.pub"))
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := audit.NewVerifier(string(vkey))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := os.ReadFile(filepath.Join(dir, "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.OpenCheckpoint(signed, verifier)
	if err != nil {
		t.Fatal(err)
	}
	lastLine := strings.Split(strings.TrimSpace(tree.String()), "\n")[len(datas)]
	size, rootB64, _ := strings.Cut(lastLine, " ")
	if strconv.FormatUint(cp.Size, 10) != size || base64.StdEncoding.EncodeToString(cp.Root[:]) != rootB64 {
		t.Errorf("checkpoint says size %d root %x; tree.txt says %s", cp.Size, cp.Root, lastLine)
	}
}
