package audit_test

import (
	"context"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/agentsec/agentsec/audit"
)

func statementLog(t *testing.T) (*audit.Log, note.Verifier) {
	t.Helper()
	skey, vkey, err := audit.GenerateKey("statements")
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(context.Background(), audit.NewMemoryStore(), audit.Options{Namespace: "ns", Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	v, err := audit.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return l, v
}

func TestStatements(t *testing.T) {
	l, v := statementLog(t)
	msg := []byte(`{"agent":"a","level":"privileged"}`)
	sig, err := l.SignStatement("trust-change/v1", msg)
	if err != nil {
		t.Fatal(err)
	}
	if !l.VerifyStatement("trust-change/v1", msg, sig) {
		t.Error("a statement's signature does not verify")
	}
	for name, ok := range map[string]bool{
		"another kind":    l.VerifyStatement("trust-change/v2", msg, sig),
		"another message": l.VerifyStatement("trust-change/v1", append(msg, ' '), sig),
		"the bare message, as a note would be signed": v.Verify(msg, sig),
	} {
		if ok {
			t.Errorf("%s verifies", name)
		}
	}
	other, _ := statementLog(t)
	if other.VerifyStatement("trust-change/v1", msg, sig) {
		t.Error("another key verifies the statement")
	}
	for _, kind := range []string{"", "12", "a\nb"} {
		if _, err := l.SignStatement(kind, msg); err == nil {
			t.Errorf("kind %q signed", kind)
		}
	}
	unsigned, err := audit.NewLog(context.Background(), audit.NewMemoryStore(), audit.Options{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	defer unsigned.Close()
	if _, err := unsigned.SignStatement("k", msg); err != audit.ErrNoSigner {
		t.Errorf("a log with no key signs: %v", err)
	}
	if unsigned.VerifyStatement("k", msg, sig) {
		t.Error("a log with no key verifies")
	}
}

// A checkpoint's signature never verifies as a statement's, nor the
// reverse: their signed bytes differ in their second line.
func TestStatementIsNoCheckpoint(t *testing.T) {
	l, v := statementLog(t)
	if _, err := l.Log(context.Background(), audit.Record{Event: "e"}); err != nil {
		t.Fatal(err)
	}
	signed, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(n.Text)
	if l.VerifyStatement("checkpoint", body, nil) {
		t.Error("an empty signature verifies")
	}
	// Sign the checkpoint's text as a statement: opening the checkpoint
	// with that signature must fail.
	sig, err := l.SignStatement("x", body)
	if err != nil {
		t.Fatal(err)
	}
	if v.Verify(body, sig) {
		t.Error("a statement's signature verifies as the checkpoint's")
	}
}
