package audit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A hashTree is a Merkle tree built with tlog alone, for tests that
// forge a store's hashes as an attacker would.
type hashTree struct{ hashes []audit.Hash }

func (h *hashTree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(h.hashes)) {
			return nil, fmt.Errorf("hash %d not built", x)
		}
		out[i] = h.hashes[x]
	}
	return out, nil
}

// add returns the stored hashes of record n, which must be the next.
func (h *hashTree) add(t testing.TB, n uint64, data []byte) []audit.Hash {
	t.Helper()
	hashes, err := tlog.StoredHashes(int64(n), data, h)
	if err != nil {
		t.Fatalf("tlog.StoredHashes(%d): %v", n, err)
	}
	h.hashes = append(h.hashes, hashes...)
	return hashes
}

func (h *hashTree) root(t testing.TB, n uint64) audit.Hash {
	t.Helper()
	root, err := tlog.TreeHash(int64(n), h)
	if err != nil {
		t.Fatalf("tlog.TreeHash(%d): %v", n, err)
	}
	return root
}

type storedCheckpoint struct {
	size   uint64
	signed []byte
}

// A snapshot is a store's contents, taken out to be doctored and served
// by a snapshotStore.
type snapshot struct {
	entries     []audit.Entry
	checkpoints []storedCheckpoint
	// size, if set, is what Size reports instead of len(entries).
	size *uint64
}

func takeSnapshot(t testing.TB, s audit.Store) *snapshot {
	t.Helper()
	ctx := context.Background()
	sn := &snapshot{}
	err := s.Scan(ctx, 0, 1<<62, func(e audit.Entry) error {
		sn.entries = append(sn.entries, audit.Entry{Seq: e.Seq, Data: bytes.Clone(e.Data), Hashes: slices.Clone(e.Hashes)})
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	err = s.Checkpoints(ctx, func(size uint64, signed []byte) error {
		sn.checkpoints = append(sn.checkpoints, storedCheckpoint{size, bytes.Clone(signed)})
		return nil
	})
	if err != nil {
		t.Fatalf("Checkpoints: %v", err)
	}
	return sn
}

func (sn *snapshot) clone() *snapshot {
	c := &snapshot{size: sn.size}
	for _, e := range sn.entries {
		c.entries = append(c.entries, audit.Entry{Seq: e.Seq, Data: bytes.Clone(e.Data), Hashes: slices.Clone(e.Hashes)})
	}
	for _, cp := range sn.checkpoints {
		c.checkpoints = append(c.checkpoints, storedCheckpoint{cp.size, bytes.Clone(cp.signed)})
	}
	return c
}

// renumber sets every entry's Seq to its position.
func (sn *snapshot) renumber() {
	for i := range sn.entries {
		sn.entries[i].Seq = uint64(i)
	}
}

// rehash renumbers the entries and recomputes all their hashes from
// their data, as a forger who knows how the tree is built would.
func (sn *snapshot) rehash(t testing.TB) {
	t.Helper()
	sn.renumber()
	var h hashTree
	for i := range sn.entries {
		sn.entries[i].Hashes = h.add(t, uint64(i), sn.entries[i].Data)
	}
}

// dropCheckpointsAbove removes the stored checkpoints larger than size.
func (sn *snapshot) dropCheckpointsAbove(size uint64) {
	sn.checkpoints = slices.DeleteFunc(sn.checkpoints, func(c storedCheckpoint) bool { return c.size > size })
}

func (sn *snapshot) setCheckpoint(size uint64, signed []byte) {
	for i := range sn.checkpoints {
		if sn.checkpoints[i].size == size {
			sn.checkpoints[i].signed = signed
			return
		}
	}
	panic(fmt.Sprintf("no checkpoint of size %d", size))
}

func (sn *snapshot) checkpoint(size uint64) []byte {
	for _, c := range sn.checkpoints {
		if c.size == size {
			return c.signed
		}
	}
	panic(fmt.Sprintf("no checkpoint of size %d", size))
}

// store returns a read-only Store serving the snapshot. Scan returns the
// entries in their order, filtered by their Seq; the hashes of the entry
// at position i are stored from tlog.StoredHashIndex(0, i) on, as in a
// store that keeps them with their record.
func (sn *snapshot) store() audit.Store {
	s := &snapshotStore{sn: sn.clone(), hashes: map[int64]audit.Hash{}}
	for i, e := range s.sn.entries {
		first := tlog.StoredHashIndex(0, int64(i))
		for j, h := range e.Hashes[:min(len(e.Hashes), int(tlog.StoredHashCount(int64(i+1))-tlog.StoredHashCount(int64(i))))] {
			s.hashes[first+int64(j)] = h
		}
	}
	return s
}

type snapshotStore struct {
	sn     *snapshot
	hashes map[int64]audit.Hash
}

var errReadOnly = errors.New("snapshot store is read-only")

func (s *snapshotStore) Size(context.Context) (uint64, error) {
	if s.sn.size != nil {
		return *s.sn.size, nil
	}
	return uint64(len(s.sn.entries)), nil
}

func (s *snapshotStore) Append(context.Context, []audit.Entry) error { return errReadOnly }

func (s *snapshotStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	for _, e := range s.sn.entries {
		if e.Seq < from || e.Seq >= to {
			continue
		}
		if err := fn(audit.Entry{Seq: e.Seq, Data: bytes.Clone(e.Data), Hashes: slices.Clone(e.Hashes)}); err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshotStore) ReadHashes(_ context.Context, indexes []int64) ([]audit.Hash, error) {
	out := make([]audit.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := s.hashes[x]
		if !ok {
			return nil, fmt.Errorf("hash %d not stored", x)
		}
		out[i] = h
	}
	return out, nil
}

func (s *snapshotStore) AddCheckpoint(context.Context, uint64, []byte) error { return errReadOnly }

func (s *snapshotStore) Checkpoints(_ context.Context, fn func(uint64, []byte) error) error {
	for _, c := range s.sn.checkpoints {
		if err := fn(c.size, bytes.Clone(c.signed)); err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshotStore) LatestCheckpoint(context.Context) (uint64, []byte, error) {
	if len(s.sn.checkpoints) == 0 {
		return 0, nil, nil
	}
	c := s.sn.checkpoints[len(s.sn.checkpoints)-1]
	return c.size, bytes.Clone(c.signed), nil
}

func (s *snapshotStore) Close() error { return nil }

const (
	signedN      = 45 // records in signedLog
	signedEvery  = 10 // a checkpoint every signedEvery records
	signedOrigin = "audit.test/log"
)

// signedRecord returns a record of signedLog, which sets every field.
func signedRecord(i int, agent string) audit.Record {
	return audit.Record{
		Event: "tool.call", Agent: fmt.Sprintf("%s-%d", agent, i), Session: fmt.Sprintf("s%d", i%3),
		Tool: "search", Scope: "shop", Outcome: []audit.Outcome{audit.OutcomeAllowed, audit.OutcomeDenied}[i%2],
		Reason: "because", RequiredLevel: "verified", AssignedLevel: "trusted", Tokens: int64(100 + i),
		Namespace: "ns", Attrs: map[string]string{"query": fmt.Sprintf("q%d", i)},
	}
}

// signedLog returns a log of signedN records over a memory store with
// checkpoints at every signedEvery records and at signedN, signed by
// signer. Records name agent. The log's store is a *swappableStore over
// the memory store.
func signedLog(t testing.TB, agent string, signer note.Signer, verifier note.Verifier) (*audit.Log, *audit.MemoryStore) {
	t.Helper()
	s := audit.NewMemoryStore()
	l := newLog(t, &swappableStore{s}, audit.Options{
		Signer: signer, Verifier: verifier, Origin: signedOrigin, Clock: tickClock(t0),
		CheckpointEvery: signedEvery, CheckpointInterval: -1,
	})
	for i := range signedN {
		if _, err := l.Log(context.Background(), signedRecord(i, agent)); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	return l, s
}

// wantVerifyError fails the test unless err is a *VerifyError naming seq.
func wantVerifyError(t *testing.T, err error, seq uint64) {
	t.Helper()
	if !errors.Is(err, audit.ErrVerify) {
		t.Fatalf("Verify: got error %v, want one matching %v", err, audit.ErrVerify)
	}
	var ve *audit.VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify: got error %T %q, want a *audit.VerifyError", err, err)
	}
	if ve.Seq != seq {
		t.Errorf("Verify: error %q names record %d, want %d", err, ve.Seq, seq)
	}
}

// wantCheckpointError fails the test unless err is a *CheckpointError
// naming the checkpoint of size from source.
func wantCheckpointError(t *testing.T, err error, size uint64, source string) {
	t.Helper()
	if !errors.Is(err, audit.ErrVerify) {
		t.Fatalf("Verify: got error %v, want one matching %v", err, audit.ErrVerify)
	}
	var ce *audit.CheckpointError
	if !errors.As(err, &ce) {
		t.Fatalf("Verify: got error %T %q, want a *audit.CheckpointError", err, err)
	}
	if ce.Size != size || ce.Source != source {
		t.Errorf("Verify: error %q names the %s checkpoint of size %d, want the %s one of size %d", err, ce.Source, ce.Size, source, size)
	}
}

// signAt signs a checkpoint of the given size and root with signer.
func signAt(t testing.TB, signer note.Signer, origin string, size uint64, root audit.Hash) []byte {
	t.Helper()
	signed, err := audit.SignCheckpoint(audit.Checkpoint{Origin: origin, Size: size, Root: root}, signer)
	if err != nil {
		t.Fatalf("SignCheckpoint: %v", err)
	}
	return signed
}

// forged is a canonical record the log never held.
var forged = []byte(`{"agent":"mallory","event":"tool.call","outcome":"allow","time":"2025-01-02T03:04:05.000000000Z"}`)

func TestVerifyDetectsTampering(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	_, orig := signedLog(t, "agent", signer, verifier)
	base := takeSnapshot(t, orig)
	if got, want := len(base.checkpoints), 5; got != want {
		t.Fatalf("the log has %d checkpoints, want %d", got, want)
	}
	latest := base.checkpoint(signedN)

	// The whole log rewritten with other records, and signed with another
	// key of the same name.
	otherSigner, otherVerifier := newKey(t, "audit.test")
	_, rewritten := signedLog(t, "forger", otherSigner, otherVerifier)
	resigned := takeSnapshot(t, rewritten)

	const k = 23 // records 20 to 29 are covered first by checkpoint 30
	tests := []struct {
		name    string
		tamper  func(t *testing.T, sn *snapshot)
		trusted [][]byte
		// The error names record wantSeq, or, if wantSource is set, the
		// checkpoint of size wantSize from wantSource.
		wantSeq    uint64
		wantSource string
		wantSize   uint64
	}{
		{
			name:    "edit the agent",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, k, `"agent":"`) },
			wantSeq: k,
		},
		{
			name:    "edit the time",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, k, `"time":"2025-01-02T03:04:`) },
			wantSeq: k,
		},
		{
			name:    "edit the tokens",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, k, `"tokens":`) },
			wantSeq: k,
		},
		{
			name:    "edit an attribute",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, k, `"query":"`) },
			wantSeq: k,
		},
		{
			name:    "edit the outcome",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, k, `"outcome":"`) },
			wantSeq: k,
		},
		{
			name:    "edit the first record",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, 0, `"session":"`) },
			wantSeq: 0,
		},
		{
			name:    "edit the last record",
			tamper:  func(t *testing.T, sn *snapshot) { editAfter(t, sn, signedN-1, `"reason":"`) },
			wantSeq: signedN - 1,
		},
		{
			name: "edit a stored hash",
			tamper: func(t *testing.T, sn *snapshot) {
				// Record 23 completes three subtrees.
				sn.entries[k].Hashes[2][7] ^= 1
			},
			wantSeq: k,
		},
		{
			name: "delete a record",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = slices.Delete(sn.entries, k, k+1)
				sn.renumber()
			},
			wantSeq: k,
		},
		{
			name: "delete a record, leaving the hashes in place",
			tamper: func(t *testing.T, sn *snapshot) {
				for i := k; i < len(sn.entries)-1; i++ {
					sn.entries[i].Data = sn.entries[i+1].Data
				}
				sn.entries = sn.entries[:len(sn.entries)-1]
			},
			wantSeq: k,
		},
		{
			name:    "delete a record, leaving a gap",
			tamper:  func(t *testing.T, sn *snapshot) { sn.entries = slices.Delete(sn.entries, k, k+1) },
			wantSeq: k,
		},
		{
			name: "insert a record",
			tamper: func(t *testing.T, sn *snapshot) {
				e := audit.Entry{Data: forged, Hashes: slices.Clone(sn.entries[k].Hashes)}
				sn.entries = slices.Insert(sn.entries, k, e)
				sn.renumber()
			},
			wantSeq: k,
		},
		{
			name: "insert a record with its own hashes",
			tamper: func(t *testing.T, sn *snapshot) {
				var h hashTree
				for i := range k {
					h.add(t, uint64(i), sn.entries[i].Data)
				}
				e := audit.Entry{Data: forged, Hashes: h.add(t, k, forged)}
				sn.entries = slices.Insert(sn.entries, k, e)
				sn.renumber()
			},
			// The forged record fits the tree; the one after it doesn't.
			wantSeq: k + 1,
		},
		{
			name: "duplicate a record",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = slices.Insert(sn.entries, k+1, sn.entries[k])
				sn.renumber()
			},
			wantSeq: k + 1,
		},
		{
			name: "swap two records",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries[k], sn.entries[k+1] = sn.entries[k+1], sn.entries[k]
				sn.renumber()
			},
			wantSeq: k,
		},
		{
			name: "swap two records' bytes",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries[k].Data, sn.entries[k+1].Data = sn.entries[k+1].Data, sn.entries[k].Data
			},
			wantSeq: k,
		},
		{
			name:    "truncate the last record",
			tamper:  func(t *testing.T, sn *snapshot) { sn.entries = sn.entries[:signedN-1] },
			wantSeq: signedN - 1,
		},
		{
			name:    "truncate the last 7 records",
			tamper:  func(t *testing.T, sn *snapshot) { sn.entries = sn.entries[:signedN-7] },
			wantSeq: signedN - 7,
		},
		{
			name:    "truncate to nothing",
			tamper:  func(t *testing.T, sn *snapshot) { sn.entries = nil },
			wantSeq: 0,
		},
		{
			name: "truncate the records and their checkpoints",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = sn.entries[:signedN-7]
				sn.dropCheckpointsAbove(signedN - 7)
			},
			// Only a checkpoint kept elsewhere shows what is missing.
			trusted: [][]byte{latest},
			wantSeq: signedN - 7,
		},
		{
			name: "a store that returns fewer records than it holds",
			tamper: func(t *testing.T, sn *snapshot) {
				size := uint64(len(sn.entries))
				sn.size = &size
				sn.entries = sn.entries[:signedN-3]
			},
			wantSeq: signedN - 3,
		},
		{
			name: "edit a record and rewrite every hash",
			tamper: func(t *testing.T, sn *snapshot) {
				editAfter(t, sn, k, `"agent":"`)
				sn.rehash(t)
			},
			// Checkpoint 30 no longer matches; checkpoint 20 still does.
			wantSeq: 20,
		},
		{
			name: "edit a record before the first checkpoint and rewrite every hash",
			tamper: func(t *testing.T, sn *snapshot) {
				editAfter(t, sn, 3, `"agent":"`)
				sn.rehash(t)
			},
			wantSeq: 0,
		},
		{
			name: "edit the last record and rewrite every hash",
			tamper: func(t *testing.T, sn *snapshot) {
				editAfter(t, sn, signedN-1, `"agent":"`)
				sn.rehash(t)
			},
			wantSeq: 40,
		},
		{
			name: "insert a record and rewrite every hash",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = slices.Insert(sn.entries, k, audit.Entry{Data: forged})
				sn.rehash(t)
			},
			wantSeq: 20,
		},
		{
			name: "delete a record and rewrite every hash",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = slices.Delete(sn.entries, k, k+1)
				sn.rehash(t)
			},
			wantSeq: 20,
		},
		{
			name: "rewrite the whole log and re-sign it with another key",
			tamper: func(t *testing.T, sn *snapshot) {
				*sn = *resigned.clone()
			},
			wantSource: "stored", wantSize: signedEvery,
		},
		{
			name: "rewrite the whole log and keep its checkpoints",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.entries = resigned.clone().entries
			},
			wantSeq: 0,
		},
		{
			name: "a checkpoint of the right size and a wrong root",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.setCheckpoint(30, signAt(t, signer, signedOrigin, 30, audit.Hash{1, 2, 3}))
			},
			wantSeq: 20,
		},
		{
			name: "a checkpoint's root edited after signing",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.setCheckpoint(30, replaceLine(t, sn.checkpoint(30), 2, "AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
			},
			wantSource: "stored", wantSize: 30,
		},
		{
			name: "a checkpoint's size edited after signing",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.setCheckpoint(30, replaceLine(t, sn.checkpoint(30), 1, "31"))
			},
			wantSource: "stored", wantSize: 30,
		},
		{
			name: "a checkpoint stored under another size",
			tamper: func(t *testing.T, sn *snapshot) {
				sn.setCheckpoint(40, sn.checkpoint(30))
			},
			wantSource: "stored", wantSize: 40,
		},
		{
			name: "a checkpoint naming another origin",
			tamper: func(t *testing.T, sn *snapshot) {
				h := takeTree(t, sn)
				sn.setCheckpoint(30, signAt(t, signer, "another/log", 30, h.root(t, 30)))
			},
			wantSource: "stored", wantSize: 30,
		},
		{
			name: "a checkpoint signed by another key",
			tamper: func(t *testing.T, sn *snapshot) {
				h := takeTree(t, sn)
				sn.setCheckpoint(20, signAt(t, otherSigner, signedOrigin, 20, h.root(t, 20)))
			},
			wantSource: "stored", wantSize: 20,
		},
		{
			name:       "a trusted checkpoint signed by another key",
			tamper:     func(t *testing.T, sn *snapshot) {},
			trusted:    [][]byte{latest, resigned.checkpoint(signedN)},
			wantSource: "trusted 2", wantSize: signedN,
		},
		{
			name:    "a trusted checkpoint of the right size and a wrong root",
			tamper:  func(t *testing.T, sn *snapshot) {},
			trusted: [][]byte{signAt(t, signer, signedOrigin, 33, audit.Hash{9})},
			wantSeq: 30,
		},
		{
			name:    "a trusted checkpoint beyond the log",
			tamper:  func(t *testing.T, sn *snapshot) {},
			trusted: [][]byte{signAt(t, signer, signedOrigin, signedN+5, audit.Hash{9})},
			wantSeq: signedN,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := base.clone()
			tt.tamper(t, sn)
			_, err := audit.Verify(ctx, sn.store(), audit.VerifyOptions{Verifier: verifier, Origin: signedOrigin, Trusted: tt.trusted})
			if tt.wantSource != "" {
				wantCheckpointError(t, err, tt.wantSize, tt.wantSource)
			} else {
				wantVerifyError(t, err, tt.wantSeq)
			}
		})
	}

	// The untouched snapshot verifies, so each failure above comes from
	// its tampering.
	if _, err := audit.Verify(ctx, base.store(), audit.VerifyOptions{Verifier: verifier, Origin: signedOrigin, Trusted: [][]byte{latest}}); err != nil {
		t.Errorf("Verify of the untouched snapshot: %v", err)
	}
}

// editAfter changes the byte after the first occurrence of marker in
// record seq to another byte of the same kind, so the record usually stays
// canonical.
func editAfter(t *testing.T, sn *snapshot, seq int, marker string) {
	t.Helper()
	data := sn.entries[seq].Data
	i := bytes.Index(data, []byte(marker))
	if i < 0 {
		t.Fatalf("record %d has no %q: %s", seq, marker, data)
	}
	i += len(marker)
	switch c := data[i]; {
	case c >= '1' && c <= '8':
		data[i] = c + 1
	case c == '9' || c == '0':
		data[i] = '1'
	case c == 'z':
		data[i] = 'a'
	default:
		data[i] = c + 1
	}
}

// replaceLine replaces line i of a signed note's text, keeping its
// signature.
func replaceLine(t *testing.T, signed []byte, i int, line string) []byte {
	t.Helper()
	lines := strings.Split(string(signed), "\n")
	if i >= len(lines) {
		t.Fatalf("note has no line %d: %q", i, signed)
	}
	lines[i] = line
	return []byte(strings.Join(lines, "\n"))
}

// takeTree rebuilds the tree of a snapshot's records.
func takeTree(t *testing.T, sn *snapshot) *hashTree {
	t.Helper()
	h := new(hashTree)
	for i, e := range sn.entries {
		h.add(t, uint64(i), e.Data)
	}
	return h
}

// Whatever byte of a record changes, Verify names that record.
func TestVerifyNamesEveryEditedByte(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	_, s := signedLog(t, "agent", signer, verifier)
	base := takeSnapshot(t, s)
	for _, k := range []int{0, 23, signedN - 1} {
		for i := range base.entries[k].Data {
			// A low bit, a case or control bit, or a UTF-8 bit.
			flip := []byte{0x01, 0x20, 0x80}[i%3]
			sn := base.clone()
			sn.entries[k].Data[i] ^= flip
			_, err := audit.Verify(ctx, sn.store(), audit.VerifyOptions{Verifier: verifier})
			var ve *audit.VerifyError
			if !errors.As(err, &ve) || ve.Seq != uint64(k) {
				t.Fatalf("record %d, byte %d ^ %#x (%q): Verify = %v, want a *VerifyError naming record %d", k, i, flip, sn.entries[k].Data, err, k)
			}
		}
	}
}

// Truncating the records and the stored checkpoints together leaves a log
// that verifies on its own: only a checkpoint kept outside the store, or
// the Log that wrote the records, can tell.
func TestVerifyTruncationNeedsTrustedCheckpoint(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	l, s := signedLog(t, "agent", signer, verifier)
	sn := takeSnapshot(t, s)
	latest := sn.checkpoint(signedN)
	sn.entries = sn.entries[:32]
	sn.dropCheckpointsAbove(32)

	res, err := audit.Verify(ctx, sn.store(), audit.VerifyOptions{Verifier: verifier})
	if err != nil || res.Records != 32 || res.Latest.Size != 30 {
		t.Errorf("Verify without a trusted checkpoint = %+v, %v; want 32 records, the latest checkpoint of size 30, nil", res, err)
	}
	_, err = audit.Verify(ctx, sn.store(), audit.VerifyOptions{Verifier: verifier, Trusted: [][]byte{latest}})
	wantVerifyError(t, err, 32)

	// The Log that appended the records knows how many it appended.
	l.Store().(*swappableStore).Store = sn.store()
	_, err = l.Verify(ctx)
	wantVerifyError(t, err, 32)
}

func TestNewLogRefusesTamperedStore(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	_, s := signedLog(t, "agent", signer, verifier)
	base := takeSnapshot(t, s)
	otherSigner, otherVerifier := newKey(t, "audit.test")
	_, other := signedLog(t, "forger", otherSigner, otherVerifier)
	resigned := takeSnapshot(t, other)
	opts := audit.Options{Signer: signer, Verifier: verifier, Origin: signedOrigin, CheckpointInterval: -1}

	tests := []struct {
		name   string
		tamper func(t *testing.T, sn *snapshot)
	}{
		{"truncated", func(t *testing.T, sn *snapshot) { sn.entries = sn.entries[:signedN-1] }},
		{"truncated to nothing", func(t *testing.T, sn *snapshot) { sn.entries = nil }},
		{"rewritten", func(t *testing.T, sn *snapshot) {
			editAfter(t, sn, 23, `"agent":"`)
			sn.rehash(t)
		}},
		{"rewritten and re-signed with another key", func(t *testing.T, sn *snapshot) { *sn = *resigned.clone() }},
		{"latest checkpoint edited", func(t *testing.T, sn *snapshot) {
			sn.setCheckpoint(signedN, replaceLine(t, sn.checkpoint(signedN), 2, "AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
		}},
		{"latest checkpoint stored under another size", func(t *testing.T, sn *snapshot) {
			sn.setCheckpoint(signedN, sn.checkpoint(40))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := base.clone()
			tt.tamper(t, sn)
			if l, err := audit.NewLog(ctx, sn.store(), opts); err == nil {
				t.Errorf("NewLog = %v, nil error; want error", l)
			}
		})
	}

	// The untouched store opens, and so does the tampered one for a log
	// that holds no verifier and so checks nothing.
	if _, err := audit.NewLog(ctx, base.store(), opts); err != nil {
		t.Errorf("NewLog over the untouched snapshot: %v", err)
	}
	sn := base.clone()
	sn.entries = sn.entries[:10]
	if _, err := audit.NewLog(ctx, sn.store(), audit.Options{}); err != nil {
		t.Errorf("NewLog without a verifier over a truncated store: %v", err)
	}
	// Another origin is refused even for an untouched store.
	other2 := opts
	other2.Origin = "another/log"
	if _, err := audit.NewLog(ctx, base.store(), other2); err == nil {
		t.Errorf("NewLog with another origin than the checkpoints' = nil error, want error")
	}
}

func TestVerifyResult(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	l, s := signedLog(t, "agent", signer, verifier)
	size, root := l.Root()
	latest, err := audit.OpenCheckpoint(takeSnapshot(t, s).checkpoint(signedN), verifier)
	if err != nil {
		t.Fatal(err)
	}
	want := audit.VerifyResult{Records: signedN, Root: root, Checkpoints: 5, Latest: latest}
	res, err := audit.Verify(ctx, s, audit.VerifyOptions{Verifier: verifier})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Verify mismatch (-want +got):\n%s", diff)
	}
	if size != signedN || latest.Size != signedN || latest.Root != root || res.Uncovered() != 0 {
		t.Errorf("Root = %d, %v; latest checkpoint %+v; Uncovered %d; want %d records all covered by a checkpoint of that root",
			size, root, latest, res.Uncovered(), signedN)
	}

	// Trusted checkpoints count, even of a size the store has.
	trusted := signAt(t, signer, signedOrigin, 30, (&hashTree{}).rootOf(t, s, 30))
	res, err = audit.Verify(ctx, s, audit.VerifyOptions{Verifier: verifier, Trusted: [][]byte{trusted, trusted}})
	if err != nil || res.Checkpoints != 7 {
		t.Errorf("Verify with two trusted checkpoints = %+v, %v; want 7 checkpoints", res, err)
	}

	// Records after the latest checkpoint are uncovered.
	for range 3 {
		if _, err := l.Log(ctx, audit.Record{Event: "late"}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	_, root = l.Root()
	res, err = audit.Verify(ctx, s, audit.VerifyOptions{Verifier: verifier})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Records != signedN+3 || res.Root != root || res.Latest.Size != signedN || res.Uncovered() != 3 {
		t.Errorf("Verify = %+v (Uncovered %d), want %d records, the log's root, the latest checkpoint of size %d, 3 uncovered",
			res, res.Uncovered(), signedN+3, signedN)
	}
}

// rootOf returns the tree hash of the first n records of s, from their
// bytes.
func (h *hashTree) rootOf(t *testing.T, s audit.Store, n uint64) audit.Hash {
	t.Helper()
	err := s.Scan(t.Context(), 0, n, func(e audit.Entry) error {
		h.add(t, e.Seq, e.Data)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return h.root(t, n)
}

func TestVerifyCheckpointsNeedVerifier(t *testing.T) {
	ctx := t.Context()
	signer, verifier := newKey(t, "audit.test")
	_, s := signedLog(t, "agent", signer, verifier)
	_, err := audit.Verify(ctx, s, audit.VerifyOptions{})
	wantCheckpointError(t, err, signedEvery, "stored")
	_, err = audit.Verify(ctx, s, audit.VerifyOptions{Verifier: verifier, Origin: "another/log"})
	wantCheckpointError(t, err, signedEvery, "stored")
	_, otherVerifier := newKey(t, "audit.test")
	_, err = audit.Verify(ctx, s, audit.VerifyOptions{Verifier: otherVerifier})
	wantCheckpointError(t, err, signedEvery, "stored")
	if !strings.Contains(err.Error(), "audit.test") {
		t.Errorf("Verify with another key: error %q does not name the key", err)
	}
}

func TestVerifyProgress(t *testing.T) {
	ctx := t.Context()
	// Progress reports every 65536 records and at the end.
	const n = 65536 + 100
	s := audit.NewMemoryStore()
	var h hashTree
	batch := make([]audit.Entry, 0, 4096)
	rec := audit.Record{Event: "e", Time: t0}
	data, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(n) {
		batch = append(batch, audit.Entry{Seq: i, Data: data, Hashes: h.add(t, i, data)})
		if len(batch) == cap(batch) || i == n-1 {
			if err := s.Append(ctx, batch); err != nil {
				t.Fatalf("Append: %v", err)
			}
			batch = batch[:0]
		}
	}
	type call struct{ done, total uint64 }
	var calls []call
	res, err := audit.Verify(ctx, s, audit.VerifyOptions{Progress: func(done, total uint64) {
		calls = append(calls, call{done, total})
	}})
	if err != nil || res.Records != n || res.Root != h.root(t, n) {
		t.Fatalf("Verify = %+v, %v; want %d records with root %v", res, err, n, h.root(t, n))
	}
	if diff := cmp.Diff([]call{{65536, n}, {n, n}}, calls, cmp.AllowUnexported(call{})); diff != "" {
		t.Errorf("Progress calls mismatch (-want +got):\n%s", diff)
	}
}

// Without checkpoints, Verify can only check that the records and hashes
// agree; the Log that wrote them also checks the root it built.
func TestLogVerifyWithoutCheckpoints(t *testing.T) {
	ctx := t.Context()
	tests := []struct {
		name    string
		tamper  func(t *testing.T, sn *snapshot)
		wantSeq uint64
	}{
		{"edit a record", func(t *testing.T, sn *snapshot) { editAfter(t, sn, 3, `"agent":"`) }, 3},
		{"edit a record and rewrite every hash", func(t *testing.T, sn *snapshot) {
			editAfter(t, sn, 3, `"agent":"`)
			sn.rehash(t)
		}, 0},
		{"truncate", func(t *testing.T, sn *snapshot) { sn.entries = sn.entries[:5] }, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := audit.NewMemoryStore()
			s := &swappableStore{mem}
			l := newLog(t, s, audit.Options{Clock: tickClock(t0)})
			for i := range 8 {
				if _, err := l.Log(ctx, signedRecord(i, "agent")); err != nil {
					t.Fatalf("Log: %v", err)
				}
			}
			sn := takeSnapshot(t, mem)
			tt.tamper(t, sn)
			if tt.wantSeq == 0 {
				// Nothing in the store gives this away.
				if _, err := audit.Verify(ctx, sn.store(), audit.VerifyOptions{}); err != nil {
					t.Fatalf("Verify of the consistently rewritten store: %v", err)
				}
			}
			s.Store = sn.store()
			_, err := l.Verify(ctx)
			wantVerifyError(t, err, tt.wantSeq)
		})
	}
}

// swappableStore lets a test change the store under a Log.
type swappableStore struct{ audit.Store }

func TestVerifyEmpty(t *testing.T) {
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	if n, err := l.Verify(t.Context()); n != 0 || err != nil {
		t.Errorf("Verify of an empty log = %d, %v; want 0, nil", n, err)
	}
	res, err := audit.Verify(t.Context(), audit.NewMemoryStore(), audit.VerifyOptions{})
	if err != nil || res.Records != 0 || res.Root != (&hashTree{}).root(t, 0) {
		t.Errorf("Verify of an empty store = %+v, %v; want 0 records with the empty tree's root", res, err)
	}
}

func TestVerifyStoreError(t *testing.T) {
	errRead := errors.New("read failed")
	signer, verifier := newKey(t, "audit.test")
	for _, fail := range []func(*faultyStore){
		func(s *faultyStore) { s.scanErr = errRead },
		func(s *faultyStore) { s.sizeErr = errRead },
		func(s *faultyStore) { s.checkpointsErr = errRead },
	} {
		s := &faultyStore{Store: audit.NewMemoryStore()}
		l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: -1})
		if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
			t.Fatalf("Log: %v", err)
		}
		fail(s)
		_, err := l.Verify(t.Context())
		if !errors.Is(err, errRead) {
			t.Errorf("Verify: got error %v, want %v", err, errRead)
		}
		// A store that can't be read is not evidence of tampering.
		if errors.Is(err, audit.ErrVerify) {
			t.Errorf("Verify: error %v matches %v, want it not to", err, audit.ErrVerify)
		}
	}
}

func TestVerifyErrorMessages(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&audit.VerifyError{Seq: 7, Reason: "stored hash does not match"}, "audit: record 7: stored hash does not match"},
		{&audit.CheckpointError{Size: 30, Source: "trusted 2", Reason: "is not signed"}, "audit: trusted 2 checkpoint of size 30: is not signed"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if !errors.Is(tt.err, audit.ErrVerify) {
			t.Errorf("errors.Is(%v, ErrVerify) = false, want true", tt.err)
		}
		if errors.Is(tt.err, audit.ErrUnavailable) {
			t.Errorf("errors.Is(%v, ErrUnavailable) = true, want false", tt.err)
		}
		if wrapped := fmt.Errorf("context: %w", tt.err); !errors.Is(wrapped, audit.ErrVerify) {
			t.Errorf("errors.Is(%v, ErrVerify) = false, want true", wrapped)
		}
	}
}
