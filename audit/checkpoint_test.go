package audit_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"golang.org/x/mod/sumdb/note"
)

// rootSeq is the hash 00 01 02 … 1f, which is
// AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= in base64.
var rootSeq = func() (h audit.Hash) {
	for i := range h {
		h[i] = byte(i)
	}
	return h
}()

const rootSeq64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

func TestCheckpointText(t *testing.T) {
	tests := []struct {
		cp   audit.Checkpoint
		want string
	}{
		{audit.Checkpoint{Origin: "example.com/log", Size: 12345, Root: rootSeq}, "example.com/log\n12345\n" + rootSeq64 + "\n"},
		{audit.Checkpoint{Origin: "o", Size: 0}, "o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"},
		{audit.Checkpoint{Origin: "a log — ü", Size: 18446744073709551615, Root: rootSeq}, "a log — ü\n18446744073709551615\n" + rootSeq64 + "\n"},
	}
	for _, tt := range tests {
		if got := string(tt.cp.Text()); got != tt.want {
			t.Errorf("%+v.Text() = %q, want %q", tt.cp, got, tt.want)
		}
		got, err := audit.ParseCheckpoint([]byte(tt.want))
		if err != nil {
			t.Errorf("ParseCheckpoint(%q): %v", tt.want, err)
			continue
		}
		if got != tt.cp {
			t.Errorf("ParseCheckpoint(%q) = %+v, want %+v", tt.want, got, tt.cp)
		}
	}
}

func TestParseCheckpointExtensions(t *testing.T) {
	want := audit.Checkpoint{Origin: "example.com/log", Size: 7, Root: rootSeq}
	for _, text := range []string{
		"example.com/log\n7\n" + rootSeq64 + "\nextension\n",
		"example.com/log\n7\n" + rootSeq64 + "\none\ntwo with spaces\n— three\n",
	} {
		got, err := audit.ParseCheckpoint([]byte(text))
		if err != nil {
			t.Errorf("ParseCheckpoint(%q): %v", text, err)
			continue
		}
		if got != want {
			t.Errorf("ParseCheckpoint(%q) = %+v, want %+v", text, got, want)
		}
	}
}

func TestParseCheckpointRejects(t *testing.T) {
	body := func(origin, size, root string) string { return origin + "\n" + size + "\n" + root + "\n" }
	tests := []struct {
		name, text string
	}{
		{"empty", ""},
		{"no trailing newline", strings.TrimSuffix(body("o", "1", rootSeq64), "\n")},
		{"two lines", "o\n1\n"},
		{"one line", "o\n"},
		{"just a newline", "\n"},
		{"size with a leading zero", body("o", "01", rootSeq64)},
		{"negative size", body("o", "-1", rootSeq64)},
		{"size with a plus", body("o", "+1", rootSeq64)},
		{"fractional size", body("o", "1.0", rootSeq64)},
		{"size in hex", body("o", "0x10", rootSeq64)},
		{"empty size", body("o", "", rootSeq64)},
		{"size with a space", body("o", " 1", rootSeq64)},
		{"size past 64 bits", body("o", "18446744073709551616", rootSeq64)},
		{"root not base64", body("o", "1", "not base64!")},
		{"root in URL-safe base64", body("o", "1", "-__7__v_-__7__v_-__7__v_-__7__v_-__7__v_-_8=")},
		{"root without padding", body("o", "1", strings.TrimSuffix(rootSeq64, "="))},
		{"root with stray bits", body("o", "1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=")},
		{"root with a carriage return", body("o", "1", rootSeq64+"\r")},
		{"root of 31 bytes", body("o", "1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==")},
		{"root of 33 bytes", body("o", "1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g")},
		{"empty root", body("o", "1", "")},
		{"empty origin", body("", "1", rootSeq64)},
		{"origin with a tab", body("o\tx", "1", rootSeq64)},
		{"origin with a carriage return", body("o\r", "1", rootSeq64)},
		{"origin with DEL", body("o\x7f", "1", rootSeq64)},
		{"origin not UTF-8", body("o\xff", "1", rootSeq64)},
		{"origin too long", body(strings.Repeat("o", 257), "1", rootSeq64)},
		{"empty extension line", body("o", "1", rootSeq64) + "\n"},
		{"empty extension line after another", body("o", "1", rootSeq64) + "ext\n\n"},
		{"oversized", body("o", "1", rootSeq64) + strings.Repeat("extension line\n", 2000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := audit.ParseCheckpoint([]byte(tt.text))
			if !errors.Is(err, audit.ErrCheckpoint) {
				t.Errorf("ParseCheckpoint(%q) = %+v, %v; want an error matching %v", tt.text, got, err, audit.ErrCheckpoint)
			}
		})
	}
}

func TestParseCheckpointSizeLimit(t *testing.T) {
	// Extension lines up to 16 KiB in all are accepted, one byte more is
	// not.
	head := "o\n1\n" + rootSeq64 + "\n"
	ext := strings.Repeat("e", 16<<10-len(head)-1) + "\n"
	if _, err := audit.ParseCheckpoint([]byte(head + ext)); err != nil {
		t.Errorf("ParseCheckpoint of 16 KiB: %v", err)
	}
	if _, err := audit.ParseCheckpoint([]byte(head + "e" + ext)); !errors.Is(err, audit.ErrCheckpoint) {
		t.Errorf("ParseCheckpoint of 16 KiB + 1: got error %v, want %v", err, audit.ErrCheckpoint)
	}
}

func TestSignCheckpointRejectsBadOrigin(t *testing.T) {
	signer, _ := newKey(t, "cp.test")
	for _, origin := range []string{"", "a\nb", "a\x00", strings.Repeat("o", 257)} {
		if _, err := audit.SignCheckpoint(audit.Checkpoint{Origin: origin, Size: 1}, signer); err == nil {
			t.Errorf("SignCheckpoint with origin %q = nil error, want error", origin)
		}
	}
}

func TestOpenCheckpoint(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	_, sameName := newKey(t, "cp.test")
	otherSigner, otherVerifier := newKey(t, "other.test")
	cp := audit.Checkpoint{Origin: "example.com/log", Size: 42, Root: rootSeq}
	signed, err := audit.SignCheckpoint(cp, signer)
	if err != nil {
		t.Fatalf("SignCheckpoint: %v", err)
	}
	wantPrefix := "example.com/log\n42\n" + rootSeq64 + "\n\n— cp.test "
	if !strings.HasPrefix(string(signed), wantPrefix) {
		t.Errorf("SignCheckpoint = %q, want it to start %q", signed, wantPrefix)
	}

	got, err := audit.OpenCheckpoint(signed, verifier)
	if err != nil {
		t.Fatalf("OpenCheckpoint with the signer's key: %v", err)
	}
	if got != cp {
		t.Errorf("OpenCheckpoint = %+v, want %+v", got, cp)
	}
	// A note signed by several keys opens with any one of them.
	both, err := note.Sign(&note.Note{Text: string(cp.Text())}, otherSigner, signer)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []note.Verifier{verifier, otherVerifier} {
		if got, err := audit.OpenCheckpoint(both, v); err != nil || got != cp {
			t.Errorf("OpenCheckpoint(signed by both, %s) = %+v, %v; want %+v", v.Name(), got, err, cp)
		}
	}

	unsigned := []byte(string(cp.Text()))
	malformedBody, err := note.Sign(&note.Note{Text: "example.com/log\n42\nnot a hash\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		signed   []byte
		verifier note.Verifier
		// The error names the verifier's key, or matches ErrCheckpoint.
		wantKey       bool
		wantMalformed bool
	}{
		{"another key", signed, otherVerifier, true, false},
		{"another key of the same name", signed, sameName, true, false},
		{"size altered", bytes.Replace(signed, []byte("\n42\n"), []byte("\n43\n"), 1), verifier, true, false},
		{"origin altered", bytes.Replace(signed, []byte("example.com"), []byte("example.org"), 1), verifier, true, false},
		{"root altered", bytes.Replace(signed, []byte("AAEC"), []byte("AAED"), 1), verifier, true, false},
		{"signature altered", append(bytes.Clone(signed[:len(signed)-3]), 'A', 'A', '\n'), verifier, true, false},
		{"unsigned", unsigned, verifier, false, true},
		{"garbage", []byte("garbage"), verifier, false, true},
		{"empty", nil, verifier, false, true},
		{"control character", append([]byte("\x01"), signed...), verifier, false, true},
		{"oversized", append(bytes.Repeat([]byte("x"), 17<<10), signed...), verifier, false, true},
		{"malformed body", malformedBody, verifier, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := audit.OpenCheckpoint(tt.signed, tt.verifier)
			if err == nil {
				t.Fatalf("OpenCheckpoint = %+v, nil error; want error", got)
			}
			if got != (audit.Checkpoint{}) {
				t.Errorf("OpenCheckpoint returned %+v with its error, want the zero Checkpoint", got)
			}
			if tt.wantKey && !strings.Contains(err.Error(), `"`+tt.verifier.Name()+`"`) {
				t.Errorf("OpenCheckpoint: error %q does not name key %q", err, tt.verifier.Name())
			}
			if tt.wantMalformed && !errors.Is(err, audit.ErrCheckpoint) {
				t.Errorf("OpenCheckpoint: got error %v, want %v", err, audit.ErrCheckpoint)
			}
		})
	}
}

func TestNewSigner(t *testing.T) {
	skey, vkey, err := audit.GenerateKey("keys.test")
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if !strings.HasPrefix(skey, "PRIVATE+KEY+keys.test+") || !strings.HasPrefix(vkey, "keys.test+") {
		t.Errorf("GenerateKey = %q, %q; want a signer key and a verifier key named keys.test", skey, vkey)
	}
	signer, derived, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	parsed, err := audit.NewVerifier(vkey + "\n") // as read from a file
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	if derived.Name() != parsed.Name() || derived.KeyHash() != parsed.KeyHash() {
		t.Errorf("NewSigner's verifier is %s+%08x, want %s+%08x", derived.Name(), derived.KeyHash(), parsed.Name(), parsed.KeyHash())
	}
	cp := audit.Checkpoint{Origin: "o", Size: 3, Root: rootSeq}
	signed, err := audit.SignCheckpoint(cp, signer)
	if err != nil {
		t.Fatalf("SignCheckpoint: %v", err)
	}
	for name, v := range map[string]note.Verifier{"derived": derived, "parsed": parsed} {
		if got, err := audit.OpenCheckpoint(signed, v); err != nil || got != cp {
			t.Errorf("OpenCheckpoint with the %s verifier = %+v, %v; want %+v", name, got, err, cp)
		}
	}
	// Another key pair's verifier does not verify.
	_, other, err := audit.GenerateKey("keys.test")
	if err != nil {
		t.Fatal(err)
	}
	otherV, err := audit.NewVerifier(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.OpenCheckpoint(signed, otherV); err == nil {
		t.Errorf("OpenCheckpoint with another key pair's verifier = nil error, want error")
	}
}

func TestKeysRejected(t *testing.T) {
	skey, vkey, err := audit.GenerateKey("keys.test")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.SplitN(skey, "+", 5) // the key's base64 may hold a +
	badSigners := []string{
		"",
		"garbage",
		vkey, // a verifier key
		strings.Join(append(copyOf(fields[:3]), "ffffffff", fields[4]), "+"),        // wrong key hash
		strings.Join(append(copyOf(fields[:4]), "!!!"), "+"),                        // bad base64
		strings.Join(append(copyOf(fields[:4]), fields[4][:len(fields[4])-4]), "+"), // short key
		strings.Replace(skey, "keys.test", "other.test", 1),                         // hash of another name
	}
	for _, k := range badSigners {
		if s, v, err := audit.NewSigner(k); err == nil {
			t.Errorf("NewSigner(%q) = %v, %v, nil error; want error", k, s, v)
		}
	}
	vfields := strings.SplitN(vkey, "+", 3)
	badVerifiers := []string{
		"",
		"garbage",
		skey, // a signer key
		strings.Join(append(copyOf(vfields[:1]), "ffffffff", vfields[2]), "+"),
		strings.Join(append(copyOf(vfields[:2]), "!!!"), "+"),
	}
	for _, k := range badVerifiers {
		if v, err := audit.NewVerifier(k); err == nil {
			t.Errorf("NewVerifier(%q) = %v, nil error; want error", k, v)
		}
	}
	for _, name := range []string{"", "a+b", "a b", "a\nb"} {
		if _, _, err := audit.GenerateKey(name); err == nil {
			t.Errorf("GenerateKey(%q) = nil error, want error", name)
		}
	}
}

// copyOf copies s, so that appending to it leaves s alone.
func copyOf(s []string) []string { return append([]string(nil), s...) }

func FuzzParseCheckpoint(f *testing.F) {
	f.Add([]byte("example.com/log\n12345\n" + rootSeq64 + "\n"))
	f.Add([]byte("o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"))
	f.Add([]byte("o\n18446744073709551615\n" + rootSeq64 + "\next one\next two\n"))
	f.Add([]byte("o\n01\n" + rootSeq64 + "\n"))
	f.Add([]byte("o\n1\n" + rootSeq64 + "\r\n"))
	f.Add([]byte("o\n1\n" + rootSeq64 + "\n\n"))
	f.Add([]byte("o\n1\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, text []byte) {
		cp, err := audit.ParseCheckpoint(text)
		if err != nil {
			if !errors.Is(err, audit.ErrCheckpoint) {
				t.Fatalf("ParseCheckpoint(%q): error %v does not match %v", text, err, audit.ErrCheckpoint)
			}
			return
		}
		again, err := audit.ParseCheckpoint(cp.Text())
		if err != nil {
			t.Fatalf("ParseCheckpoint(%q) = %+v, whose Text %q does not parse: %v", text, cp, cp.Text(), err)
		}
		if again != cp {
			t.Fatalf("ParseCheckpoint(%q) = %+v, but its Text parses to %+v", text, cp, again)
		}
		// Without extension lines, one checkpoint has one encoding.
		if bytes.Count(text, []byte("\n")) == 3 && !bytes.Equal(cp.Text(), text) {
			t.Fatalf("ParseCheckpoint(%q) = %+v, whose Text is %q", text, cp, cp.Text())
		}
	})
}

func FuzzOpenCheckpoint(f *testing.F) {
	skey, _, err := audit.GenerateKey("fuzz.test")
	if err != nil {
		f.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		f.Fatal(err)
	}
	signed, err := audit.SignCheckpoint(audit.Checkpoint{Origin: "fuzz.test", Size: 9, Root: rootSeq}, signer)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add(bytes.Replace(signed, []byte("\n9\n"), []byte("\n8\n"), 1))
	f.Add([]byte("fuzz.test\n9\n" + rootSeq64 + "\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		cp, err := audit.OpenCheckpoint(msg, verifier)
		if err != nil {
			return
		}
		// Only the note signed above verifies: nothing else can carry a
		// valid signature by this key.
		if cp != (audit.Checkpoint{Origin: "fuzz.test", Size: 9, Root: rootSeq}) {
			t.Fatalf("OpenCheckpoint(%q) = %+v, a checkpoint the key never signed", msg, cp)
		}
		n, err := note.Open(msg, note.VerifierList(verifier))
		if err != nil || n.Text != string((audit.Checkpoint{Origin: "fuzz.test", Size: 9, Root: rootSeq}).Text()) {
			t.Fatalf("OpenCheckpoint(%q) succeeded, but note.Open = %v, %v", msg, n, err)
		}
	})
}
