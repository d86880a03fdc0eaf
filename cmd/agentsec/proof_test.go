package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/store/sqlite"
)

// TestCheckProofTampered alters valid proofs and checks that check-proof
// refuses each, in one line.
func TestCheckProofTampered(t *testing.T) {
	dir := demoLog(t)
	db, pub := filepath.Join(dir, "log.db"), filepath.Join(dir, "demo.pub")
	prove := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := runExit(t, &Main{}, append([]string{"audit", "prove", "-db", db}, args...)...)
		if code != 0 {
			t.Fatalf("prove %v: exit %d\n%s", args, code, stderr)
		}
		return stdout
	}
	incl := prove("-record", "2")
	cons := prove("-old", filepath.Join(dir, "six.cp"))
	firstHash := func(p string) string {
		i := strings.Index(p, "\nhash ")
		return p[i+6 : i+6+44]
	}
	tests := []struct {
		name, proof, want string
	}{
		{"inclusion: another index", strings.Replace(incl, "index 2\n", "index 3\n", 1), "record 3 is not in the tree"},
		{"inclusion: a proof hash changed", strings.Replace(incl, firstHash(incl), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1), "record 2 is not in the tree"},
		{"inclusion: a hash dropped", strings.Replace(incl, "hash "+firstHash(incl)+"\n", "", 1), "record 2 is not in the tree"},
		{"inclusion: checkpoint altered", strings.Replace(incl, "\n12\n", "\n13\n", 1), "checkpoint"},
		{"consistency: a proof hash changed", strings.Replace(cons, firstHash(cons), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1), "does not extend"},
		{"consistency: checkpoints swapped", swapCheckpoints(t, cons), "larger than the newer"},
		{"truncated", incl[:len(incl)/2], "invalid proof"},
		{"trailing data", incl + "more\n", "unexpected data after the proof"},
		{"empty", "", "is not an agentsec proof"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.proof == incl || tt.proof == cons {
				t.Fatal("the test did not alter the proof")
			}
			code, stdout, stderr := runExit(t, &Main{Stdin: strings.NewReader(tt.proof)}, "audit", "check-proof", "-pubkey", pub, "-")
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
			}
			wantOneLine(t, stderr, tt.want)
		})
	}
	// The proofs were valid before.
	for _, p := range []string{incl, cons} {
		if code, _, stderr := runExit(t, &Main{Stdin: strings.NewReader(p)}, "audit", "check-proof", "-pubkey", pub, "-"); code != 0 {
			t.Errorf("valid proof: exit %d\n%s", code, stderr)
		}
	}
}

// swapCheckpoints swaps the two checkpoints of a consistency proof.
func swapCheckpoints(t *testing.T, proof string) string {
	t.Helper()
	i := strings.Index(proof, "checkpoint ")
	parts := strings.SplitAfter(proof[i:], "\n\n")
	// parts: "checkpoint N\n<body>\n\n", "<sig>\ncheckpoint N\n<body>\n\n", "<sig>\n"
	if len(parts) != 3 {
		t.Fatalf("consistency proof of an unexpected shape:\n%s", proof)
	}
	j := strings.Index(parts[1], "\ncheckpoint ")
	first := parts[0] + parts[1][:j+1]
	second := parts[1][j+1:] + parts[2]
	return proof[:i] + second + first
}

// check-proof shows a proved record with control characters escaped, so a
// record can't send escape sequences to the terminal of whoever checks it.
func TestCheckProofEscapesControlCharacters(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	skey, vkey, err := audit.GenerateKey("esc")
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "audit.db")
	st, err := sqlite.Open(ctx, db, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "esc", Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Log(ctx, audit.Record{Event: "tool.call", Reason: "csi \u009b31m and bidi \u202e here"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "esc.pub")
	if err := os.WriteFile(pub, []byte(vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	proof, _, err := run(t, "audit", "prove", "-db", db, "-record", "0")
	if err != nil {
		t.Fatal(err)
	}
	proofFile := filepath.Join(dir, "proof.txt")
	if err := os.WriteFile(proofFile, []byte(proof), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, "audit", "check-proof", "-pubkey", pub, proofFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out, "\u009b\u202e") || !strings.Contains(out, `\u009b31m`) || !strings.Contains(out, `\u202e`) {
		t.Errorf("check-proof printed %q, want the control characters escaped", out)
	}
}
