package main

import (
	"encoding/base64"
	"encoding/json"
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
