package audit_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/mod/sumdb/tlog"
)

func TestInclusionProof(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	records := storedRecords(t, s)
	for _, size := range []uint64{10, 30, signedN} {
		for _, seq := range []uint64{0, 1, 9, 23, 29, 44} {
			if seq >= size {
				continue
			}
			t.Run(fmt.Sprintf("record %d of %d", seq, size), func(t *testing.T) {
				p, err := audit.ProveInclusion(ctx, s, seq, sn.checkpoint(size))
				if err != nil {
					t.Fatalf("ProveInclusion: %v", err)
				}
				text, err := p.MarshalText()
				if err != nil {
					t.Fatalf("MarshalText: %v", err)
				}
				want := fmt.Sprintf("agentsec inclusion proof v1\nindex %d\nrecord %s\n", seq, base64.StdEncoding.EncodeToString(p.Record))
				for _, h := range p.Hashes {
					want += "hash " + base64.StdEncoding.EncodeToString(h[:]) + "\n"
				}
				want += fmt.Sprintf("checkpoint %d\n%s", len(sn.checkpoint(size)), sn.checkpoint(size))
				if string(text) != want {
					t.Errorf("MarshalText = %q, want %q", text, want)
				}
				var q audit.InclusionProof
				if err := q.UnmarshalText(text); err != nil {
					t.Fatalf("UnmarshalText(%q): %v", text, err)
				}
				if diff := cmp.Diff(p, &q, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("UnmarshalText(MarshalText(p)) mismatch (-want +got):\n%s", diff)
				}
				rec, cp, err := audit.CheckInclusion(&q, verifier)
				if err != nil {
					t.Fatalf("CheckInclusion: %v", err)
				}
				if diff := cmp.Diff(records[seq], rec); diff != "" {
					t.Errorf("CheckInclusion: record mismatch (-want +got):\n%s", diff)
				}
				if cp.Size != size || cp.Origin != signedOrigin {
					t.Errorf("CheckInclusion: got checkpoint %+v, want size %d of %s", cp, size, signedOrigin)
				}
			})
		}
	}
}

func TestProveInclusionErrors(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	tests := []struct {
		name       string
		seq        uint64
		checkpoint []byte
	}{
		{"record at the checkpoint's size", 30, sn.checkpoint(30)},
		{"record beyond the checkpoint", 40, sn.checkpoint(30)},
		{"record beyond the log", 1 << 40, sn.checkpoint(signedN)},
		{"unsigned checkpoint", 3, []byte("audit.test/log\n10\n" + rootSeq64 + "\n")},
		{"garbage checkpoint", 3, []byte("garbage")},
		{"no checkpoint", 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := audit.ProveInclusion(ctx, s, tt.seq, tt.checkpoint); err == nil {
				t.Errorf("ProveInclusion = %+v, nil error; want error", p)
			}
		})
	}
}

func TestCheckInclusionFails(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	// Another log sharing the key, and a key of the same name.
	_, fork := signedLog(t, "forger", signer, verifier)
	forkSn := takeSnapshot(t, fork)
	otherSigner, _ := newKey(t, "proof.test")

	const seq = 23
	prove := func(t *testing.T) *audit.InclusionProof {
		t.Helper()
		p, err := audit.ProveInclusion(ctx, s, seq, sn.checkpoint(30))
		if err != nil {
			t.Fatalf("ProveInclusion: %v", err)
		}
		return p
	}
	if _, _, err := audit.CheckInclusion(prove(t), verifier); err != nil {
		t.Fatalf("CheckInclusion of the untouched proof: %v", err)
	}
	resigned := func(t *testing.T, signed []byte, signer interface {
		Name() string
		KeyHash() uint32
		Sign([]byte) ([]byte, error)
	}) []byte {
		t.Helper()
		cp, err := audit.OpenCheckpoint(signed, verifier)
		if err != nil {
			t.Fatal(err)
		}
		out, err := audit.SignCheckpoint(cp, signer)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	tests := []struct {
		name   string
		tamper func(t *testing.T, p *audit.InclusionProof)
		// wantProof says the error matches ErrProof; otherwise it must
		// name the verifier's key.
		wantProof bool
	}{
		{"record byte edited", func(t *testing.T, p *audit.InclusionProof) {
			p.Record = bytes.Replace(p.Record, []byte("agent-23"), []byte("agent-24"), 1)
		}, true},
		{"record no longer canonical", func(t *testing.T, p *audit.InclusionProof) {
			p.Record = append(p.Record, ' ')
		}, true},
		{"record of another index", func(t *testing.T, p *audit.InclusionProof) {
			p.Record = sn.entries[seq+1].Data
		}, true},
		{"index + 1", func(t *testing.T, p *audit.InclusionProof) { p.Seq++ }, true},
		{"index - 1", func(t *testing.T, p *audit.InclusionProof) { p.Seq-- }, true},
		{"index beyond the checkpoint", func(t *testing.T, p *audit.InclusionProof) { p.Seq = 30 }, true},
		{"index far beyond", func(t *testing.T, p *audit.InclusionProof) { p.Seq = 1 << 62 }, true},
		{"hash edited", func(t *testing.T, p *audit.InclusionProof) { p.Hashes[1][31] ^= 0x80 }, true},
		{"hash dropped", func(t *testing.T, p *audit.InclusionProof) { p.Hashes = p.Hashes[:len(p.Hashes)-1] }, true},
		{"hash added", func(t *testing.T, p *audit.InclusionProof) { p.Hashes = append(p.Hashes, tlog.Hash{}) }, true},
		{"hashes swapped", func(t *testing.T, p *audit.InclusionProof) {
			p.Hashes[0], p.Hashes[1] = p.Hashes[1], p.Hashes[0]
		}, true},
		{"checkpoint too small", func(t *testing.T, p *audit.InclusionProof) { p.Checkpoint = sn.checkpoint(20) }, true},
		{"checkpoint of a larger tree", func(t *testing.T, p *audit.InclusionProof) { p.Checkpoint = sn.checkpoint(40) }, true},
		{"checkpoint of a log sharing the key", func(t *testing.T, p *audit.InclusionProof) { p.Checkpoint = forkSn.checkpoint(30) }, true},
		{"checkpoint signed by another key", func(t *testing.T, p *audit.InclusionProof) {
			p.Checkpoint = resigned(t, p.Checkpoint, otherSigner)
		}, false},
		{"checkpoint edited", func(t *testing.T, p *audit.InclusionProof) {
			p.Checkpoint = bytes.Replace(p.Checkpoint, []byte("\n30\n"), []byte("\n31\n"), 1)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := prove(t)
			tt.tamper(t, p)
			rec, cp, err := audit.CheckInclusion(p, verifier)
			if err == nil {
				t.Fatalf("CheckInclusion = %+v, %+v, nil error; want error", rec, cp)
			}
			if tt.wantProof && !errors.Is(err, audit.ErrProof) {
				t.Errorf("CheckInclusion: got error %v, want %v", err, audit.ErrProof)
			}
			if !tt.wantProof && !strings.Contains(err.Error(), `"proof.test"`) {
				t.Errorf("CheckInclusion: error %q does not name the key", err)
			}
		})
	}
}

func TestConsistencyProof(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	sizes := []uint64{10, 20, 30, 40, signedN}
	for _, older := range sizes {
		for _, newer := range sizes {
			if older > newer {
				continue
			}
			p, err := audit.ProveConsistency(ctx, s, sn.checkpoint(older), sn.checkpoint(newer))
			if err != nil {
				t.Fatalf("ProveConsistency(%d, %d): %v", older, newer, err)
			}
			text, err := p.MarshalText()
			if err != nil {
				t.Fatalf("MarshalText: %v", err)
			}
			want := "agentsec consistency proof v1\n"
			for _, h := range p.Hashes {
				want += "hash " + base64.StdEncoding.EncodeToString(h[:]) + "\n"
			}
			want += fmt.Sprintf("checkpoint %d\n%scheckpoint %d\n%s", len(sn.checkpoint(older)), sn.checkpoint(older), len(sn.checkpoint(newer)), sn.checkpoint(newer))
			if string(text) != want {
				t.Errorf("MarshalText = %q, want %q", text, want)
			}
			var q audit.ConsistencyProof
			if err := q.UnmarshalText(text); err != nil {
				t.Fatalf("UnmarshalText(%q): %v", text, err)
			}
			if diff := cmp.Diff(p, &q, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("UnmarshalText(MarshalText(p)) mismatch (-want +got):\n%s", diff)
			}
			o, n, err := audit.CheckConsistency(&q, verifier)
			if err != nil || o.Size != older || n.Size != newer {
				t.Errorf("CheckConsistency(%d, %d) = %+v, %+v, %v; want those sizes, nil", older, newer, o, n, err)
			}
		}
	}
}

func TestCheckConsistencyFails(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	// The log rewritten, and signed with the same key.
	_, fork := signedLog(t, "forger", signer, verifier)
	forkSn := takeSnapshot(t, fork)
	otherSigner, _ := newKey(t, "proof.test")

	prove := func(t *testing.T, s audit.Store, older, newer []byte) *audit.ConsistencyProof {
		t.Helper()
		p, err := audit.ProveConsistency(ctx, s, older, newer)
		if err != nil {
			t.Fatalf("ProveConsistency: %v", err)
		}
		return p
	}
	good := func(t *testing.T) *audit.ConsistencyProof {
		return prove(t, s, sn.checkpoint(20), sn.checkpoint(signedN))
	}
	if _, _, err := audit.CheckConsistency(good(t), verifier); err != nil {
		t.Fatalf("CheckConsistency of the untouched proof: %v", err)
	}
	cpOf := func(t *testing.T, signed []byte) audit.Checkpoint {
		t.Helper()
		cp, err := audit.OpenCheckpoint(signed, verifier)
		if err != nil {
			t.Fatal(err)
		}
		return cp
	}

	tests := []struct {
		name      string
		proof     func(t *testing.T) *audit.ConsistencyProof
		wantProof bool
	}{
		{"rewritten log, proved from its own store", func(t *testing.T) *audit.ConsistencyProof {
			return prove(t, fork, sn.checkpoint(20), forkSn.checkpoint(signedN))
		}, true},
		{"rewritten log, proved from the original store", func(t *testing.T) *audit.ConsistencyProof {
			return prove(t, s, sn.checkpoint(20), forkSn.checkpoint(signedN))
		}, true},
		{"two trees of one size", func(t *testing.T) *audit.ConsistencyProof {
			return prove(t, s, sn.checkpoint(30), forkSn.checkpoint(30))
		}, true},
		{"swapped order", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			p.Old, p.New = p.New, p.Old
			return p
		}, true},
		{"hash edited", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			p.Hashes[0][0] ^= 1
			return p
		}, true},
		{"hash dropped", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			p.Hashes = p.Hashes[1:]
			return p
		}, true},
		{"proof of other sizes", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			p.Old = sn.checkpoint(10)
			return p
		}, true},
		{"another origin", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			cp := cpOf(t, p.New)
			cp.Origin = "another/log"
			var err error
			if p.New, err = audit.SignCheckpoint(cp, signer); err != nil {
				t.Fatal(err)
			}
			return p
		}, true},
		{"older checkpoint signed by another key", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			var err error
			if p.Old, err = audit.SignCheckpoint(cpOf(t, p.Old), otherSigner); err != nil {
				t.Fatal(err)
			}
			return p
		}, false},
		{"newer checkpoint edited", func(t *testing.T) *audit.ConsistencyProof {
			p := good(t)
			p.New = bytes.Replace(p.New, []byte("\n45\n"), []byte("\n46\n"), 1)
			return p
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, n, err := audit.CheckConsistency(tt.proof(t), verifier)
			if err == nil {
				t.Fatalf("CheckConsistency = %+v, %+v, nil error; want error", o, n)
			}
			if tt.wantProof && !errors.Is(err, audit.ErrProof) {
				t.Errorf("CheckConsistency: got error %v, want %v", err, audit.ErrProof)
			}
			if !tt.wantProof && !strings.Contains(err.Error(), `"proof.test"`) {
				t.Errorf("CheckConsistency: error %q does not name the key", err)
			}
		})
	}

	if p, err := audit.ProveConsistency(ctx, s, sn.checkpoint(30), sn.checkpoint(20)); err == nil {
		t.Errorf("ProveConsistency(30, 20) = %+v, nil error; want error", p)
	}
}

// validProofTexts returns an inclusion and a consistency proof in text
// form, for the parser tests.
func validProofTexts(t testing.TB) (inclusion, consistency []byte) {
	t.Helper()
	signer, verifier := newKey(t, "proof.test")
	_, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	ip, err := audit.ProveInclusion(t.Context(), s, 23, sn.checkpoint(30))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.ProveConsistency(t.Context(), s, sn.checkpoint(20), sn.checkpoint(signedN))
	if err != nil {
		t.Fatal(err)
	}
	inclusion, _ = ip.MarshalText()
	consistency, _ = cp.MarshalText()
	return inclusion, consistency
}

func TestUnmarshalProofRejects(t *testing.T) {
	inclusion, consistency := validProofTexts(t)
	hash := "hash " + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	lines := func(text []byte) []string { return strings.SplitAfter(string(text), "\n") }
	il := lines(inclusion) // header, index, record, hash…, checkpoint, note lines
	// without removes the lines starting with prefix from text.
	without := func(text []byte, prefix string) string {
		var out []string
		for _, l := range lines(text) {
			if !strings.HasPrefix(l, prefix) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "")
	}
	replace := func(text []byte, old, new string) string {
		if !bytes.Contains(text, []byte(old)) {
			t.Fatalf("proof has no %q: %s", old, text)
		}
		return strings.Replace(string(text), old, new, 1)
	}
	hashLine := func(text []byte) string {
		for _, l := range lines(text) {
			if strings.HasPrefix(l, "hash ") {
				return l
			}
		}
		t.Fatalf("proof has no hash: %s", text)
		return ""
	}

	inclusionTests := []struct{ name, text string }{
		{"empty", ""},
		{"header only", il[0]},
		{"wrong header", replace(inclusion, "inclusion proof v1", "inclusion proof v2")},
		{"consistency header", replace(inclusion, "inclusion", "consistency")},
		{"header without newline", strings.TrimSuffix(il[0], "\n")},
		{"missing index", without(inclusion, "index ")},
		{"missing record", without(inclusion, "record ")},
		{"missing checkpoint", string(inclusion[:bytes.Index(inclusion, []byte("\ncheckpoint "))+1])},
		{"index with a leading zero", replace(inclusion, "index 23", "index 023")},
		{"negative index", replace(inclusion, "index 23", "index -23")},
		{"fractional index", replace(inclusion, "index 23", "index 23.0")},
		{"index past 63 bits", replace(inclusion, "index 23", "index 9223372036854775808")},
		{"index without a value", replace(inclusion, "index 23", "index")},
		{"fields out of order", replace(inclusion, il[1]+il[2], il[2]+il[1])},
		{"record not base64", replace(inclusion, "record ", "record !")},
		{"record in URL-safe base64", replace(inclusion, "record ", "record _-")},
		{"hash not base64", replace(inclusion, hashLine(inclusion), "hash !!!\n")},
		{"hash of 31 bytes", replace(inclusion, hashLine(inclusion), "hash "+base64.StdEncoding.EncodeToString(make([]byte, 31))+"\n")},
		{"hash of 33 bytes", replace(inclusion, hashLine(inclusion), "hash "+base64.StdEncoding.EncodeToString(make([]byte, 33))+"\n")},
		{"empty hash", replace(inclusion, hashLine(inclusion), "hash \n")},
		{"too many hashes", replace(inclusion, hashLine(inclusion), strings.Repeat(hash, 129))},
		{"checkpoint length past the end", replace(inclusion, "checkpoint ", "checkpoint 9")},
		{"checkpoint length too large", replace(inclusion, "checkpoint ", "checkpoint 99999999999")},
		{"checkpoint length not a number", replace(inclusion, "checkpoint ", "checkpoint x")},
		{"trailing data", string(inclusion) + "x"},
		{"trailing newline", string(inclusion) + "\n"},
		{"two proofs", string(inclusion) + string(inclusion)},
		{"oversized", string(inclusion) + strings.Repeat("x", 256<<10)},
	}
	for _, tt := range inclusionTests {
		t.Run("inclusion/"+tt.name, func(t *testing.T) {
			var p audit.InclusionProof
			err := p.UnmarshalText([]byte(tt.text))
			if !errors.Is(err, audit.ErrProof) {
				t.Errorf("UnmarshalText(%q): got error %v, want %v", tt.text, err, audit.ErrProof)
			}
			if p.Record != nil || p.Hashes != nil || p.Checkpoint != nil || p.Seq != 0 {
				t.Errorf("UnmarshalText changed the proof to %+v despite its error", p)
			}
		})
	}

	consistencyTests := []struct{ name, text string }{
		{"empty", ""},
		{"inclusion header", replace(consistency, "consistency", "inclusion")},
		{"missing both checkpoints", string(consistency[:bytes.Index(consistency, []byte("\ncheckpoint "))+1])},
		{"one checkpoint", string(consistency[:bytes.LastIndex(consistency, []byte("checkpoint "))])},
		{"hash not base64", replace(consistency, hashLine(consistency), "hash ====\n")},
		{"hash of 31 bytes", replace(consistency, hashLine(consistency), "hash "+base64.StdEncoding.EncodeToString(make([]byte, 31))+"\n")},
		{"too many hashes", replace(consistency, hashLine(consistency), strings.Repeat(hash, 129))},
		{"hash after the checkpoints", string(consistency) + hash},
		{"second checkpoint length past the end", string(consistency[:bytes.LastIndex(consistency, []byte("checkpoint "))]) + "checkpoint 500\nabc"},
		{"trailing data", string(consistency) + "x"},
	}
	for _, tt := range consistencyTests {
		t.Run("consistency/"+tt.name, func(t *testing.T) {
			var p audit.ConsistencyProof
			err := p.UnmarshalText([]byte(tt.text))
			if !errors.Is(err, audit.ErrProof) {
				t.Errorf("UnmarshalText(%q): got error %v, want %v", tt.text, err, audit.ErrProof)
			}
			if p.Hashes != nil || p.Old != nil || p.New != nil {
				t.Errorf("UnmarshalText changed the proof to %+v despite its error", p)
			}
		})
	}

	// 128 hashes are allowed.
	var p audit.ConsistencyProof
	if err := p.UnmarshalText([]byte(replace(consistency, hashLine(consistency), strings.Repeat(hash, 128-strings.Count(string(consistency), "hash ")+1)))); err != nil || len(p.Hashes) != 128 {
		t.Errorf("UnmarshalText with 128 hashes = %d hashes, %v; want 128, nil", len(p.Hashes), err)
	}
}

func FuzzInclusionProof(f *testing.F) {
	inclusion, consistency := validProofTexts(f)
	f.Add(inclusion)
	f.Add(consistency)
	f.Add([]byte("agentsec inclusion proof v1\nindex 0\nrecord \ncheckpoint 0\n"))
	f.Add([]byte("agentsec inclusion proof v1\nindex 1\nrecord e30=\nhash AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\ncheckpoint 3\nabc"))
	f.Add([]byte("agentsec inclusion proof v1\nindex 1\nrecord e30=\nhash AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\ncheckpoint 3\nabc"))
	f.Add([]byte("agentsec inclusion proof v1\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		var p audit.InclusionProof
		if err := p.UnmarshalText(text); err != nil {
			if !errors.Is(err, audit.ErrProof) {
				t.Fatalf("UnmarshalText(%q): error %v does not match %v", text, err, audit.ErrProof)
			}
			return
		}
		again, err := p.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText(%+v): %v", p, err)
		}
		var q audit.InclusionProof
		if err := q.UnmarshalText(again); err != nil {
			t.Fatalf("UnmarshalText(%q) = %+v, whose MarshalText %q does not parse: %v", text, p, again, err)
		}
		if diff := cmp.Diff(p, q, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("UnmarshalText(MarshalText(UnmarshalText(%q))) mismatch (-want +got):\n%s", text, diff)
		}
		if third, _ := q.MarshalText(); !bytes.Equal(third, again) {
			t.Fatalf("MarshalText is not stable: %q, then %q", again, third)
		}
	})
}

func FuzzConsistencyProof(f *testing.F) {
	inclusion, consistency := validProofTexts(f)
	f.Add(consistency)
	f.Add(inclusion)
	f.Add([]byte("agentsec consistency proof v1\ncheckpoint 0\ncheckpoint 0\n"))
	f.Add([]byte("agentsec consistency proof v1\nhash AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\ncheckpoint 2\nabcheckpoint 1\nc"))
	f.Fuzz(func(t *testing.T, text []byte) {
		var p audit.ConsistencyProof
		if err := p.UnmarshalText(text); err != nil {
			if !errors.Is(err, audit.ErrProof) {
				t.Fatalf("UnmarshalText(%q): error %v does not match %v", text, err, audit.ErrProof)
			}
			return
		}
		again, err := p.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText(%+v): %v", p, err)
		}
		var q audit.ConsistencyProof
		if err := q.UnmarshalText(again); err != nil {
			t.Fatalf("UnmarshalText(%q) = %+v, whose MarshalText %q does not parse: %v", text, p, again, err)
		}
		if diff := cmp.Diff(p, q, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("UnmarshalText(MarshalText(UnmarshalText(%q))) mismatch (-want +got):\n%s", text, diff)
		}
		if third, _ := q.MarshalText(); !bytes.Equal(third, again) {
			t.Fatalf("MarshalText is not stable: %q, then %q", again, third)
		}
	})
}
