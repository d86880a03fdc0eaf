package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// The log's tree is checked against two implementations it does not use
// for building: tlog's own stored-hash and tree-hash functions, and
// transparency-dev/merkle's compact ranges and proof verifiers.

// hashList is every stored hash, by stored hash index.
type hashList []Hash

func (h hashList) ReadHashes(indexes []int64) ([]Hash, error) {
	out := make([]Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(h)) {
			return nil, fmt.Errorf("hash %d not stored", x)
		}
		out[i] = h[x]
	}
	return out, nil
}

// merkleRoot returns the RFC 6962 root of leaves computed by
// transparency-dev/merkle.
func merkleRoot(t *testing.T, leaves [][]byte) Hash {
	t.Helper()
	if len(leaves) == 0 {
		return Hash(rfc6962.DefaultHasher.EmptyRoot())
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, leaf := range leaves {
		if err := r.Append(rfc6962.DefaultHasher.HashLeaf(leaf), nil); err != nil {
			t.Fatalf("compact.Range.Append: %v", err)
		}
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatalf("compact.Range.GetRootHash: %v", err)
	}
	return Hash(root)
}

// leafData returns the data of leaf i of the trees under test.
func leafData(i uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("leaf "), i)
}

// checkFrontier appends n leaves with appendLeaf and checks, at every
// size, that the stored hashes are tlog's, that the root is tlog's, and,
// at the sizes check selects, that it is transparency-dev/merkle's too.
func checkFrontier(t *testing.T, n uint64, check func(size uint64) bool) {
	t.Helper()
	var (
		f      frontier
		stored hashList
		leaves [][]byte
	)
	for i := range n {
		data := leafData(i)
		want, err := tlog.StoredHashes(int64(i), data, stored)
		if err != nil {
			t.Fatalf("tlog.StoredHashes(%d): %v", i, err)
		}
		got := f.appendLeaf(nil, i, tlog.RecordHash(data))
		if !slices.Equal(got, want) {
			t.Fatalf("appendLeaf(%d) stored %v, want %v", i, got, want)
		}
		if len(got) != storedHashCount(i) {
			t.Fatalf("storedHashCount(%d) = %d, want %d", i, storedHashCount(i), len(got))
		}
		stored = append(stored, got...)
		leaves = append(leaves, data)

		size := i + 1
		wantRoot, err := tlog.TreeHash(int64(size), stored)
		if err != nil {
			t.Fatalf("tlog.TreeHash(%d): %v", size, err)
		}
		if got := f.root(size); got != wantRoot {
			t.Fatalf("root(%d) = %v, want tlog's %v", size, got, wantRoot)
		}
		if check(size) {
			if m := merkleRoot(t, leaves); m != wantRoot {
				t.Fatalf("tlog.TreeHash(%d) = %v, but transparency-dev/merkle says %v", size, wantRoot, m)
			}
			// The frontier read back from the stored hashes is the same.
			levels, indexes := frontierIndexes(size)
			hashes, err := stored.ReadHashes(indexes)
			if err != nil {
				t.Fatalf("reading frontierIndexes(%d) = %v: %v", size, indexes, err)
			}
			var g frontier
			for j, lv := range levels {
				g[lv] = hashes[j]
			}
			if got := g.root(size); got != wantRoot {
				t.Fatalf("root of the frontier read from frontierIndexes(%d) = %v, want %v", size, got, wantRoot)
			}
		}
	}
}

func TestFrontierMatchesTlog(t *testing.T) {
	checkFrontier(t, 300, func(uint64) bool { return true })
	rng := rand.New(rand.NewPCG(3, 4))
	for range 4 {
		n := 300 + rng.Uint64N(4700)
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			checkFrontier(t, n, func(size uint64) bool { return size == n || size%509 == 0 })
		})
	}
}

func TestEmptyTreeHash(t *testing.T) {
	if want := Hash(sha256.Sum256(nil)); emptyTreeHash != want {
		t.Errorf("emptyTreeHash = %v, want SHA-256 of nothing, %v", emptyTreeHash, want)
	}
	if got, want := emptyTreeHash, Hash(rfc6962.DefaultHasher.EmptyRoot()); got != want {
		t.Errorf("emptyTreeHash = %v, want transparency-dev/merkle's %v", got, want)
	}
	var f frontier
	if got := f.root(0); got != emptyTreeHash {
		t.Errorf("root(0) = %v, want %v", got, emptyTreeHash)
	}
}

func TestStoredHashCount(t *testing.T) {
	for n := range int64(1 << 12) {
		if got, want := storedHashCount(uint64(n)), tlog.StoredHashCount(n+1)-tlog.StoredHashCount(n); int64(got) != want {
			t.Fatalf("storedHashCount(%d) = %d, want %d", n, got, want)
		}
	}
}

// testSigner returns a new signer and verifier.
func testSigner(t *testing.T) (note.Signer, note.Verifier) {
	t.Helper()
	skey, _, err := GenerateKey("tree.test")
	if err != nil {
		t.Fatal(err)
	}
	s, v, err := NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// treeLog returns a log of n records over a memory store, with the bytes
// of each record.
func treeLog(t *testing.T, n int) (*Log, *MemoryStore, [][]byte) {
	t.Helper()
	s := NewMemoryStore()
	var c stepClock
	l, err := NewLog(t.Context(), s, Options{Clock: c.next, CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var records [][]byte
	for i := range n {
		rec, err := l.Log(t.Context(), Record{Event: "tree.test", Tokens: int64(i)})
		if err != nil {
			t.Fatal(err)
		}
		rec.Seq = 0
		b, err := EncodeRecord(nil, &rec)
		if err != nil {
			t.Fatal(err)
		}
		records = append(records, b)
	}
	return l, s, records
}

// stepClock is a clock for a single goroutine that ticks a millisecond a
// call.
type stepClock struct{ n int64 }

func (c *stepClock) next() time.Time {
	c.n++
	return time.Unix(1_700_000_000, c.n*int64(time.Millisecond))
}

func TestLogRootMatchesMerkle(t *testing.T) {
	ctx := t.Context()
	s := NewMemoryStore()
	var c stepClock
	l, err := NewLog(ctx, s, Options{Clock: c.next})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var records [][]byte
	rng := rand.New(rand.NewPCG(5, 6))
	checks := map[uint64]bool{}
	for range 5 {
		checks[300+rng.Uint64N(4700)] = true
	}
	for size := uint64(0); size <= 5000; size++ {
		if size <= 300 || checks[size] || size == 5000 {
			gotSize, root := l.Root()
			if gotSize != size {
				t.Fatalf("Root: got size %d, want %d", gotSize, size)
			}
			if want := merkleRoot(t, records); root != want {
				t.Fatalf("Root at size %d = %v, want transparency-dev/merkle's %v", size, root, want)
			}
			want, err := tlog.TreeHash(int64(size), storeHashReader{ctx, s})
			if err != nil || root != want {
				t.Fatalf("Root at size %d = %v; tlog.TreeHash over the store = %v, %v", size, root, want, err)
			}
			res, err := Verify(ctx, s, VerifyOptions{})
			if err != nil || res.Records != size || res.Root != root {
				t.Fatalf("Verify at size %d = %+v, %v; want %d records with root %v", size, res, err, size, root)
			}
		}
		if size == 5000 {
			break
		}
		rec, err := l.Log(ctx, Record{Event: "tree.test", Tokens: int64(size)})
		if err != nil {
			t.Fatal(err)
		}
		rec.Seq = 0
		b, err := EncodeRecord(nil, &rec)
		if err != nil {
			t.Fatal(err)
		}
		records = append(records, b)
	}
}

// signTree signs a checkpoint of the first n records of s.
func signTree(t *testing.T, signer note.Signer, s Store, n uint64) []byte {
	t.Helper()
	root, err := tlog.TreeHash(int64(n), storeHashReader{t.Context(), s})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := SignCheckpoint(Checkpoint{Origin: "tree.test", Size: n, Root: root}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func byteHashes(hashes []Hash) [][]byte {
	out := make([][]byte, len(hashes))
	for i := range hashes {
		out[i] = hashes[i][:]
	}
	return out
}

// proofSizes returns the tree sizes the proof tests try: every size up
// to 40 and a few larger ones.
func proofSizes(n uint64) []uint64 {
	var sizes []uint64
	for size := uint64(1); size <= min(n, 40); size++ {
		sizes = append(sizes, size)
	}
	return append(sizes, 63, 64, 65, 100, 127, 128, 129, n)
}

func TestProofsMatchMerkle(t *testing.T) {
	ctx := t.Context()
	const n = 200
	_, s, records := treeLog(t, n)
	signer, verifier := testSigner(t)
	cps := map[uint64][]byte{}
	roots := map[uint64]Hash{}
	for _, size := range proofSizes(n) {
		cps[size] = signTree(t, signer, s, size)
		cp, err := OpenCheckpoint(cps[size], verifier)
		if err != nil {
			t.Fatal(err)
		}
		if m := merkleRoot(t, records[:size]); cp.Root != m {
			t.Fatalf("checkpoint of size %d has root %v, want transparency-dev/merkle's %v", size, cp.Root, m)
		}
		roots[size] = cp.Root
	}
	hasher := rfc6962.DefaultHasher

	t.Run("inclusion", func(t *testing.T) {
		for size, signed := range cps {
			for seq := uint64(0); seq < size; seq += max(1, size/23) {
				p, err := ProveInclusion(ctx, s, seq, signed)
				if err != nil {
					t.Fatalf("ProveInclusion(%d, size %d): %v", seq, size, err)
				}
				if string(p.Record) != string(records[seq]) {
					t.Fatalf("ProveInclusion(%d): got record %s, want %s", seq, p.Record, records[seq])
				}
				leaf := hasher.HashLeaf(records[seq])
				root := roots[size]
				if err := proof.VerifyInclusion(hasher, seq, size, leaf, byteHashes(p.Hashes), root[:]); err != nil {
					t.Fatalf("proof of record %d in size %d: transparency-dev/merkle: %v", seq, size, err)
				}
				rec, cp, err := CheckInclusion(p, verifier)
				if err != nil || rec.Seq != seq || cp.Size != size {
					t.Fatalf("CheckInclusion(record %d, size %d) = record %d, size %d, %v", seq, size, rec.Seq, cp.Size, err)
				}
				// The same hashes do not prove another record.
				if err := proof.VerifyInclusion(hasher, seq, size, hasher.HashLeaf(append(records[seq], ' ')), byteHashes(p.Hashes), root[:]); err == nil {
					t.Fatalf("transparency-dev/merkle accepts the proof of record %d for other bytes", seq)
				}
			}
		}
	})
	t.Run("consistency", func(t *testing.T) {
		for older, o := range cps {
			for newer, nw := range cps {
				if older > newer {
					continue
				}
				p, err := ProveConsistency(ctx, s, o, nw)
				if err != nil {
					t.Fatalf("ProveConsistency(%d, %d): %v", older, newer, err)
				}
				r1, r2 := roots[older], roots[newer]
				if err := proof.VerifyConsistency(hasher, older, newer, byteHashes(p.Hashes), r1[:], r2[:]); err != nil {
					t.Fatalf("consistency proof of sizes %d and %d: transparency-dev/merkle: %v", older, newer, err)
				}
				gotOld, gotNew, err := CheckConsistency(p, verifier)
				if err != nil || gotOld.Size != older || gotNew.Size != newer {
					t.Fatalf("CheckConsistency(%d, %d) = sizes %d, %d, %v", older, newer, gotOld.Size, gotNew.Size, err)
				}
				if older == newer {
					continue
				}
				// The same hashes do not relate another old root.
				wrong := r1
				wrong[0] ^= 1
				if err := proof.VerifyConsistency(hasher, older, newer, byteHashes(p.Hashes), wrong[:], r2[:]); err == nil {
					t.Fatalf("transparency-dev/merkle accepts the proof of sizes %d and %d for another old root", older, newer)
				}
			}
		}
	})

	// Proofs made by transparency-dev/merkle's own reference pass
	// CheckInclusion: both sides agree on the hash order.
	t.Run("merkle proofs", func(t *testing.T) {
		const size = 37
		for seq := range uint64(size) {
			want := inclusionByHand(hasher, records[:size], seq)
			p, err := ProveInclusion(ctx, s, seq, cps[size])
			if err != nil {
				t.Fatal(err)
			}
			if got := byteHashes(p.Hashes); !slices.EqualFunc(got, want, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Fatalf("ProveInclusion(%d, size %d) = %x, want RFC 6962's audit path %x", seq, size, got, want)
			}
		}
	})
}

// inclusionByHand returns the RFC 6962 audit path of leaf m in leaves,
// following section 2.1.1 of the RFC literally.
func inclusionByHand(h *rfc6962.Hasher, leaves [][]byte, m uint64) [][]byte {
	n := uint64(len(leaves))
	if n <= 1 {
		return nil
	}
	k := uint64(1)
	for k*2 < n {
		k *= 2
	}
	if m < k {
		return append(inclusionByHand(h, leaves[:k], m), mth(h, leaves[k:]))
	}
	return append(inclusionByHand(h, leaves[k:], m-k), mth(h, leaves[:k]))
}

// mth is the RFC 6962 Merkle Tree Hash.
func mth(h *rfc6962.Hasher, leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		return h.EmptyRoot()
	case 1:
		return h.HashLeaf(leaves[0])
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	return h.HashChildren(mth(h, leaves[:k]), mth(h, leaves[k:]))
}
