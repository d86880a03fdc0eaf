// Package audittest is a conformance suite for implementations of
// audit.Store. Every store — in memory, SQLite, PostgreSQL — runs the same
// suite from its own tests:
//
//	func TestStore(t *testing.T) {
//		audittest.Run(t, func(t *testing.T) audit.Store {
//			return audit.NewMemoryStore()
//		})
//	}
//
// Run the suite with -race: some subtests exist only to give the race
// detector something to look at.
package audittest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Run checks that the stores newStore returns behave as audit.Store
// documents, using only that interface, and that an audit.Log over them
// appends, signs checkpoints, reopens and verifies. It calls newStore once
// per subtest; newStore must return a new, empty store and arrange with
// t.Cleanup for whatever must happen when the subtest ends, such as
// closing the store. If the store is an audit.Querier, Run also checks
// that audit.Query finds through it exactly what a scan finds.
func Run(t *testing.T, newStore func(t *testing.T) audit.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, audit.Store)
	}{
		{"Empty", testEmpty},
		{"AppendContinuesLog", testAppendContinuesLog},
		{"AppendRejectsWrongSeq", testAppendRejectsWrongSeq},
		{"AppendDoesNotKeepSlices", testAppendDoesNotKeepSlices},
		{"ScanRange", testScanRange},
		{"ScanStopsAtError", testScanStopsAtError},
		{"ScanCanceled", testScanCanceled},
		{"ReadHashes", testReadHashes},
		{"Checkpoints", testCheckpoints},
		{"CheckpointConflict", testCheckpointConflict},
		{"CheckpointsStopAtError", testCheckpointsStopAtError},
		{"ConcurrentReadsAndAppend", testConcurrentReadsAndAppend},
		{"LogConcurrentAndReopen", testLogConcurrentAndReopen},
		{"LogSignedCheckpoints", testLogSignedCheckpoints},
		{"LogRefusesTruncatedStore", testLogRefusesTruncatedStore},
		{"Query", testQuery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			if s == nil {
				t.Fatal("newStore returned nil")
			}
			tt.fn(t, s)
		})
	}
}

// base is the time of the suite's record 0.
var base = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// recordData returns the canonical bytes of the suite's record seq. The
// records differ in length, up to a few KiB, and hold escapes and
// non-ASCII text, so a store that re-encodes, trims or pads them fails.
func recordData(seq uint64) []byte {
	r := audit.Record{
		Time:      base.Add(time.Duration(seq) * time.Millisecond),
		Namespace: "audittest",
		Event:     "audittest.entry",
		Agent:     fmt.Sprintf("agent-%d", seq%7),
		Reason:    strings.Repeat("é \"quoted\" \\ \x01 日本 ", int(seq*37%97)),
		Tokens:    int64(seq),
		Attrs:     map[string]string{"seq": fmt.Sprint(seq), "b": "\t", "a": "ü"},
	}
	return encode(&r)
}

func encode(r *audit.Record) []byte {
	b, err := audit.EncodeRecord(nil, r)
	if err != nil {
		panic(fmt.Sprintf("audittest: encoding record %+v: %v", r, err))
	}
	return b
}

// A Tree builds entries as audit.Log would, but with tlog's own
// functions, so a test need not trust the package it tests: each entry's
// Hashes are tlog.StoredHashes over the hashes stored before it. Tests use
// it to fill a store quickly, or to forge a consistent log. The zero Tree
// is empty and ready to use.
type Tree struct {
	hashes []audit.Hash // every stored hash, by stored hash index
	size   uint64
}

// ReadHashes implements tlog.HashReader.
func (tr *Tree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(tr.hashes)) {
			return nil, fmt.Errorf("audittest: hash %d not built (have %d)", x, len(tr.hashes))
		}
		out[i] = tr.hashes[x]
	}
	return out, nil
}

// Add returns the entry that appends data to the tree.
func (tr *Tree) Add(data []byte) audit.Entry {
	seq := tr.size
	hashes, err := tlog.StoredHashes(int64(seq), data, tr)
	if err != nil {
		panic(fmt.Sprintf("audittest: hashing entry %d: %v", seq, err))
	}
	if got, want := int64(len(tr.hashes)), tlog.StoredHashIndex(0, int64(seq)); got != want {
		panic(fmt.Sprintf("audittest: entry %d's hashes start at %d, want %d", seq, got, want))
	}
	tr.hashes = append(tr.hashes, hashes...)
	tr.size++
	return audit.Entry{Seq: seq, Data: data, Hashes: hashes}
}

// root returns the tree hash of its first n entries.
func (tr *Tree) root(t *testing.T, n uint64) audit.Hash {
	t.Helper()
	h, err := tlog.TreeHash(int64(n), tr)
	if err != nil {
		t.Fatalf("tlog.TreeHash(%d): %v", n, err)
	}
	return h
}

// makeEntries returns entries 0 to n-1 of the suite's log and their tree.
func makeEntries(n int) ([]audit.Entry, *Tree) {
	tr := new(Tree)
	entries := make([]audit.Entry, n)
	for i := range entries {
		entries[i] = tr.Add(recordData(uint64(i)))
	}
	return entries, tr
}

// cloneEntries deep-copies entries, so that a store keeping the slices it
// is given cannot change what the test expects.
func cloneEntries(entries []audit.Entry) []audit.Entry {
	out := make([]audit.Entry, len(entries))
	for i, e := range entries {
		e.Data = bytes.Clone(e.Data)
		e.Hashes = slices.Clone(e.Hashes)
		out[i] = e
	}
	return out
}

// appendEntries appends entries in one call and fails the test if it
// can't.
func appendEntries(t *testing.T, s audit.Store, entries []audit.Entry) {
	t.Helper()
	if err := s.Append(t.Context(), cloneEntries(entries)); err != nil {
		t.Fatalf("Append(entries %d to %d): %v", entries[0].Seq, entries[len(entries)-1].Seq, err)
	}
}

// scan returns copies of the entries Scan(from, to) gives.
func scan(t *testing.T, s audit.Store, from, to uint64) []audit.Entry {
	t.Helper()
	var got []audit.Entry
	err := s.Scan(t.Context(), from, to, func(e audit.Entry) error {
		// Both are valid only until fn returns.
		e.Data, e.Hashes = bytes.Clone(e.Data), slices.Clone(e.Hashes)
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan(%d, %d): %v", from, to, err)
	}
	return got
}

// wantSize fails the test unless the store holds size entries.
func wantSize(t *testing.T, s audit.Store, size uint64) {
	t.Helper()
	got, err := s.Size(t.Context())
	if err != nil {
		t.Fatalf("Size: %v", err)
	}
	if got != size {
		t.Errorf("Size = %d, want %d", got, size)
	}
}

// diffEntry describes how got differs from want, or returns "".
func diffEntry(got, want audit.Entry) string {
	switch {
	case got.Seq != want.Seq:
		return fmt.Sprintf("got Seq %d, want %d", got.Seq, want.Seq)
	case !bytes.Equal(got.Data, want.Data):
		return fmt.Sprintf("got Data %q, want %q", got.Data, want.Data)
	case !slices.Equal(got.Hashes, want.Hashes):
		return fmt.Sprintf("got Hashes %v, want %v", got.Hashes, want.Hashes)
	}
	return ""
}

// wantEntries fails the test unless got and want hold the same entries.
func wantEntries(t *testing.T, what string, got, want []audit.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d entries, want %d", what, len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if d := diffEntry(got[i], want[i]); d != "" {
			t.Errorf("%s: entry %d: %s", what, i, d)
			return // one mismatch is enough; the rest usually follow from it
		}
	}
}

// wantHashes fails the test unless the store holds exactly the hashes of
// tr's first n entries: each can be read, and the next index cannot.
func wantHashes(t *testing.T, s audit.Store, tr *Tree, n uint64) {
	t.Helper()
	count := tlog.StoredHashIndex(0, int64(n))
	indexes := make([]int64, count)
	for i := range indexes {
		indexes[i] = int64(i)
	}
	got, err := s.ReadHashes(t.Context(), indexes)
	if err != nil {
		t.Fatalf("ReadHashes(the %d hashes of %d entries): %v", count, n, err)
	}
	if !slices.Equal(got, tr.hashes[:count]) {
		t.Errorf("ReadHashes(the %d hashes of %d entries) = %v, want %v", count, n, got, tr.hashes[:count])
	}
	if _, err := s.ReadHashes(t.Context(), []int64{count}); err == nil {
		t.Errorf("ReadHashes([%d]) with %d hashes stored = nil error, want error", count, count)
	}
}

func testEmpty(t *testing.T, s audit.Store) {
	ctx := t.Context()
	wantSize(t, s, 0)
	if got := scan(t, s, 0, 10); len(got) != 0 {
		t.Errorf("Scan(0, 10) of an empty store: got %d entries, want 0", len(got))
	}
	for _, indexes := range [][]int64{{0}, {1}, {-1}} {
		if _, err := s.ReadHashes(ctx, indexes); err == nil {
			t.Errorf("ReadHashes(%v) of an empty store = nil error, want error", indexes)
		}
	}
	if got, err := s.ReadHashes(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("ReadHashes(nil) = %v, %v; want no hashes, nil", got, err)
	}
	size, signed, err := s.LatestCheckpoint(ctx)
	if err != nil || signed != nil {
		t.Errorf("LatestCheckpoint of an empty store = %d, %q, %v; want a nil checkpoint, nil", size, signed, err)
	}
	err = s.Checkpoints(ctx, func(size uint64, _ []byte) error {
		return fmt.Errorf("got checkpoint of size %d", size)
	})
	if err != nil {
		t.Errorf("Checkpoints of an empty store: %v", err)
	}
}

func testAppendContinuesLog(t *testing.T, s audit.Store) {
	all, tr := makeEntries(40)
	for _, batch := range [][2]int{{0, 1}, {1, 4}, {4, 5}, {5, 8}, {8, 9}, {9, 31}, {31, 32}, {32, 40}} {
		appendEntries(t, s, all[batch[0]:batch[1]])
		wantSize(t, s, uint64(batch[1]))
		wantHashes(t, s, tr, uint64(batch[1]))
	}
	wantEntries(t, "Scan(0, 40)", scan(t, s, 0, 40), all)
	// An empty Append changes nothing.
	if err := s.Append(t.Context(), nil); err != nil {
		t.Errorf("Append(no entries): %v", err)
	}
	wantSize(t, s, 40)
}

// junkEntry returns an entry claiming Seq seq, with as many hashes as an
// entry at seq stores, so that only its Seq is wrong.
func junkEntry(seq uint64) audit.Entry {
	hashes := make([]audit.Hash, 1+bits.TrailingZeros64(^seq))
	for i := range hashes {
		hashes[i][0] = byte(i + 1)
	}
	return audit.Entry{Seq: seq, Data: recordData(seq % 1000), Hashes: hashes}
}

func testAppendRejectsWrongSeq(t *testing.T, s audit.Store) {
	// Entries are taken from a longer log, so each one is the right
	// entry for its Seq; only where it is appended is wrong.
	all, tr := makeEntries(10)
	if err := s.Append(t.Context(), cloneEntries(all[1:2])); err == nil {
		t.Errorf("Append(Seq 1) to an empty store = nil error, want error")
	}
	wantSize(t, s, 0)

	appendEntries(t, s, all[:3])
	e := func(seqs ...int) []audit.Entry {
		var out []audit.Entry
		for _, seq := range seqs {
			out = append(out, all[seq])
		}
		return out
	}
	tests := []struct {
		name    string
		entries []audit.Entry
	}{
		{"gap", e(4)},
		{"far gap", []audit.Entry{junkEntry(1 << 40)}},
		{"max seq", []audit.Entry{junkEntry(math.MaxUint64)}},
		{"repeat last", e(2)},
		{"repeat first", e(0)},
		{"batch starting with a gap", e(4, 5)},
		{"batch starting with a repeat", e(2, 3)},
		{"batch with a later gap", e(3, 4, 6)},
		{"batch with a later repeat", e(3, 4, 5, 4)},
		{"batch repeating its first", e(3, 3)},
		{"batch out of order", e(4, 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Append(t.Context(), cloneEntries(tt.entries)); err == nil {
				t.Errorf("Append = nil error, want error")
			}
			// Nothing of the batch may be stored, not even its valid
			// leading entries or their hashes.
			wantSize(t, s, 3)
			wantEntries(t, "Scan(0, 10)", scan(t, s, 0, 10), all[:3])
			wantHashes(t, s, tr, 3)
		})
	}

	// The store is still usable after refusing.
	appendEntries(t, s, all[3:])
	wantSize(t, s, 10)
	wantEntries(t, "Scan(0, 10)", scan(t, s, 0, 10), all)
	wantHashes(t, s, tr, 10)
}

func testAppendDoesNotKeepSlices(t *testing.T, s audit.Store) {
	want, tr := makeEntries(25)
	// Like audit.Log, reuse one buffer for every entry's Data and one for
	// its Hashes, and scribble over both after each Append.
	buf := make([]byte, 0, 64<<10)
	hbuf := make([]audit.Hash, 0, 64)
	for _, w := range want[:20] {
		buf = append(buf[:0], w.Data...)
		hbuf = append(hbuf[:0], w.Hashes...)
		e := w
		e.Data, e.Hashes = buf, hbuf
		if err := s.Append(t.Context(), []audit.Entry{e}); err != nil {
			t.Fatalf("Append(entry %d): %v", e.Seq, err)
		}
		for i := range buf {
			buf[i] = 'x'
		}
		for i := range hbuf {
			hbuf[i] = audit.Hash{0xff}
		}
	}
	wantEntries(t, "Scan(0, 20)", scan(t, s, 0, 20), want[:20])

	// The same for a batch.
	batch := cloneEntries(want[20:])
	if err := s.Append(t.Context(), batch); err != nil {
		t.Fatalf("Append(entries 20 to 24): %v", err)
	}
	for _, e := range batch {
		clear(e.Data)
		clear(e.Hashes)
	}
	wantEntries(t, "Scan(20, 25)", scan(t, s, 20, 25), want[20:])
	wantHashes(t, s, tr, 25)
}

func testScanRange(t *testing.T, s audit.Store) {
	all, _ := makeEntries(10)
	appendEntries(t, s, all)
	tests := []struct {
		from, to uint64
		want     []audit.Entry
	}{
		{0, 10, all},
		{0, 1, all[:1]},
		{3, 7, all[3:7]},
		{9, 10, all[9:]},
		{0, 0, nil},
		{5, 5, nil},
		{7, 3, nil},
		{0, 11, all},
		{6, 1000, all[6:]},
		{8, math.MaxUint64, all[8:]},
		{10, 20, nil},
		{15, 20, nil},
		{math.MaxUint64, math.MaxUint64, nil},
		{math.MaxUint64, 0, nil},
	}
	for _, tt := range tests {
		what := fmt.Sprintf("Scan(%d, %d)", tt.from, tt.to)
		t.Run(what, func(t *testing.T) {
			wantEntries(t, what, scan(t, s, tt.from, tt.to), tt.want)
		})
	}
}

func testScanStopsAtError(t *testing.T, s audit.Store) {
	all, _ := makeEntries(10)
	appendEntries(t, s, all)
	errStop := errors.New("audittest: stop")
	for _, stopAt := range []int{1, 3, 10} {
		t.Run(fmt.Sprint(stopAt), func(t *testing.T) {
			calls := 0
			err := s.Scan(t.Context(), 0, 10, func(audit.Entry) error {
				calls++
				if calls == stopAt {
					return errStop
				}
				return nil
			})
			// Callers such as audit.Query compare the error with ==, so
			// the store must return it unwrapped.
			if err != errStop {
				t.Errorf("Scan: got error %v, want %v", err, errStop)
			}
			if calls != stopAt {
				t.Errorf("Scan called fn %d times, want %d", calls, stopAt)
			}
		})
	}
}

func testScanCanceled(t *testing.T, s audit.Store) {
	const n = 3000
	all, _ := makeEntries(n)
	for i := 0; i < n; i += 500 {
		appendEntries(t, s, all[i:i+500])
	}

	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		calls := 0
		err := s.Scan(ctx, 0, n, func(audit.Entry) error { calls++; return nil })
		if err == nil {
			t.Errorf("Scan with a canceled context = nil error after %d entries, want error", calls)
		}
	})
	t.Run("during", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		calls := 0
		err := s.Scan(ctx, 0, n, func(audit.Entry) error {
			calls++
			cancel()
			return nil
		})
		if err == nil {
			t.Errorf("Scan canceled at its first entry = nil error after %d entries, want error", calls)
		}
	})
}

func testReadHashes(t *testing.T, s audit.Store) {
	ctx := t.Context()
	const n = 100
	all, tr := makeEntries(n)
	appendEntries(t, s, all[:1])
	appendEntries(t, s, all[1:64])
	appendEntries(t, s, all[64:])
	count := int64(len(tr.hashes))
	if want := tlog.StoredHashIndex(0, n); count != want {
		t.Fatalf("built %d hashes for %d entries, want %d", count, n, want)
	}
	wantHashes(t, s, tr, n)

	// Each entry's hashes are at its stored hash indexes.
	for _, e := range all {
		var indexes []int64
		for level := range e.Hashes {
			indexes = append(indexes, tlog.StoredHashIndex(level, int64(e.Seq>>level)))
		}
		got, err := s.ReadHashes(ctx, indexes)
		if err != nil {
			t.Fatalf("ReadHashes(the hashes of entry %d, %v): %v", e.Seq, indexes, err)
		}
		if !slices.Equal(got, e.Hashes) {
			t.Fatalf("ReadHashes(the hashes of entry %d, %v) = %v, want %v", e.Seq, indexes, got, e.Hashes)
		}
	}

	// Any order, repeats included; the result follows the request.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		indexes := make([]int64, 1+rng.IntN(40))
		for i := range indexes {
			indexes[i] = rng.Int64N(count)
		}
		got, err := s.ReadHashes(ctx, indexes)
		if err != nil {
			t.Fatalf("ReadHashes(%v): %v", indexes, err)
		}
		for i, x := range indexes {
			if i >= len(got) || got[i] != tr.hashes[x] {
				t.Fatalf("ReadHashes(%v) = %v: hash %d is not stored hash %d", indexes, got, i, x)
			}
		}
	}

	// Asking for one hash not stored fails the whole call.
	for _, indexes := range [][]int64{{count}, {count + 1}, {1 << 40}, {-1}, {0, 5, count}, {count, 0}, {3, -1}} {
		if got, err := s.ReadHashes(ctx, indexes); err == nil {
			t.Errorf("ReadHashes(%v) with %d hashes stored = %v, nil error; want error", indexes, count, got)
		}
	}

	// The tree read back through the store is the tree built.
	for _, size := range []uint64{1, 2, 3, 7, 64, 65, 99, 100} {
		got, err := tlog.TreeHash(int64(size), storeReader{ctx, s})
		if err != nil {
			t.Fatalf("tlog.TreeHash(%d) over the store: %v", size, err)
		}
		if want := tr.root(t, size); got != want {
			t.Errorf("tlog.TreeHash(%d) over the store = %v, want %v", size, got, want)
		}
	}
}

// storeReader reads a store's hashes for tlog.
type storeReader struct {
	ctx context.Context
	s   audit.Store
}

func (r storeReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return r.s.ReadHashes(r.ctx, indexes)
}

// A signedCheckpoint is a signed checkpoint as a store keeps it.
type signedCheckpoint struct {
	size   uint64
	signed []byte
}

// testKey returns a new signer and verifier.
func testKey(t *testing.T, name string) (note.Signer, note.Verifier) {
	t.Helper()
	skey, _, err := audit.GenerateKey(name)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return signer, verifier
}

// sign returns a signed checkpoint of tr's first n entries.
func sign(t *testing.T, signer note.Signer, tr *Tree, n uint64) []byte {
	t.Helper()
	signed, err := audit.SignCheckpoint(audit.Checkpoint{Origin: "audittest", Size: n, Root: tr.root(t, n)}, signer)
	if err != nil {
		t.Fatalf("SignCheckpoint: %v", err)
	}
	return signed
}

// storedCheckpoints returns copies of the store's checkpoints.
func storedCheckpoints(t *testing.T, s audit.Store) []signedCheckpoint {
	t.Helper()
	var got []signedCheckpoint
	err := s.Checkpoints(t.Context(), func(size uint64, signed []byte) error {
		got = append(got, signedCheckpoint{size, bytes.Clone(signed)})
		return nil
	})
	if err != nil {
		t.Fatalf("Checkpoints: %v", err)
	}
	return got
}

// wantCheckpoints fails the test unless the store holds exactly want.
func wantCheckpoints(t *testing.T, s audit.Store, want []signedCheckpoint) {
	t.Helper()
	got := storedCheckpoints(t, s)
	if len(got) != len(want) {
		t.Errorf("Checkpoints gave %d checkpoints, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i].size != want[i].size || !bytes.Equal(got[i].signed, want[i].signed) {
			t.Errorf("checkpoint %d: got size %d %q, want size %d %q", i, got[i].size, got[i].signed, want[i].size, want[i].signed)
		}
	}
	if len(want) == 0 {
		return
	}
	last := want[len(want)-1]
	size, signed, err := s.LatestCheckpoint(t.Context())
	if err != nil {
		t.Fatalf("LatestCheckpoint: %v", err)
	}
	if size != last.size || !bytes.Equal(signed, last.signed) {
		t.Errorf("LatestCheckpoint = %d, %q; want %d, %q", size, signed, last.size, last.signed)
	}
}

func testCheckpoints(t *testing.T, s audit.Store) {
	ctx := t.Context()
	signer, _ := testKey(t, "audittest")
	all, tr := makeEntries(30)
	appendEntries(t, s, all)

	cp := map[uint64][]byte{}
	for _, n := range []uint64{0, 1, 7, 16, 29, 30} {
		cp[n] = sign(t, signer, tr, n)
	}
	add := func(n uint64) {
		t.Helper()
		// The store must copy the bytes it is given.
		signed := bytes.Clone(cp[n])
		if err := s.AddCheckpoint(ctx, n, signed); err != nil {
			t.Fatalf("AddCheckpoint(%d): %v", n, err)
		}
		clear(signed)
	}
	// Added out of order, listed in increasing size.
	add(16)
	wantCheckpoints(t, s, []signedCheckpoint{{16, cp[16]}})
	add(7)
	wantCheckpoints(t, s, []signedCheckpoint{{7, cp[7]}, {16, cp[16]}})
	add(30)
	add(1)
	add(29)
	add(0)
	all6 := []signedCheckpoint{{0, cp[0]}, {1, cp[1]}, {7, cp[7]}, {16, cp[16]}, {29, cp[29]}, {30, cp[30]}}
	wantCheckpoints(t, s, all6)

	// Adding the same bytes again is not an error, and keeps one copy.
	add(16)
	add(30)
	wantCheckpoints(t, s, all6)
}

func testCheckpointConflict(t *testing.T, s audit.Store) {
	ctx := t.Context()
	signer, _ := testKey(t, "audittest")
	other, _ := testKey(t, "audittest")
	all, tr := makeEntries(10)
	appendEntries(t, s, all)
	mine := sign(t, signer, tr, 10)
	if err := s.AddCheckpoint(ctx, 10, mine); err != nil {
		t.Fatalf("AddCheckpoint(10): %v", err)
	}
	for _, signed := range [][]byte{
		sign(t, other, tr, 10),          // the same tree, signed by another key
		append(bytes.Clone(mine), '\n'), // one byte longer
		mine[:len(mine)-1],              // one byte shorter
		{},
	} {
		if err := s.AddCheckpoint(ctx, 10, bytes.Clone(signed)); err == nil {
			t.Errorf("AddCheckpoint(10, %q) over %q = nil error, want error", signed, mine)
		}
	}
	wantCheckpoints(t, s, []signedCheckpoint{{10, mine}})
}

func testCheckpointsStopAtError(t *testing.T, s audit.Store) {
	ctx := t.Context()
	signer, _ := testKey(t, "audittest")
	all, tr := makeEntries(5)
	appendEntries(t, s, all)
	for n := range uint64(6) {
		if err := s.AddCheckpoint(ctx, n, sign(t, signer, tr, n)); err != nil {
			t.Fatalf("AddCheckpoint(%d): %v", n, err)
		}
	}
	errStop := errors.New("audittest: stop")
	calls := 0
	err := s.Checkpoints(ctx, func(uint64, []byte) error {
		calls++
		if calls == 3 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Errorf("Checkpoints: got error %v, want %v", err, errStop)
	}
	if calls != 3 {
		t.Errorf("Checkpoints called fn %d times, want 3", calls)
	}
}

func testConcurrentReadsAndAppend(t *testing.T, s audit.Store) {
	const n = 300
	all, tr := makeEntries(n)
	signer, _ := testKey(t, "audittest")
	ctx := t.Context()

	signed := map[int][]byte{}
	for i := 30; i <= n; i += 30 {
		signed[i] = sign(t, signer, tr, uint64(i))
	}

	var (
		wg       sync.WaitGroup
		done     = make(chan struct{})
		errsMu   sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		errsMu.Lock()
		defer errsMu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}

	wg.Go(func() {
		defer close(done)
		for i := 0; i < n; {
			size := min(1+i%3, n-i) // batches of 1 to 3
			if err := s.Append(ctx, cloneEntries(all[i:i+size])); err != nil {
				fail(fmt.Errorf("Append(entries %d to %d): %v", i, i+size-1, err))
				return
			}
			i += size
			if signed[i] != nil {
				if err := s.AddCheckpoint(ctx, uint64(i), signed[i]); err != nil {
					fail(fmt.Errorf("AddCheckpoint(%d): %v", i, err))
					return
				}
			}
		}
	})
	for r := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				size, err := s.Size(ctx)
				if err != nil {
					fail(fmt.Errorf("Size: %v", err))
					return
				}
				if size > n {
					fail(fmt.Errorf("Size = %d, more than the %d entries appended", size, n))
					return
				}
				next := uint64(0)
				err = s.Scan(ctx, 0, n+10, func(e audit.Entry) error {
					if e.Seq != next || e.Seq >= n {
						return fmt.Errorf("got entry %d, want %d", e.Seq, next)
					}
					if d := diffEntry(e, all[e.Seq]); d != "" {
						return fmt.Errorf("entry %d: %s", e.Seq, d)
					}
					next++
					return nil
				})
				if err != nil {
					fail(fmt.Errorf("Scan during Append: %v", err))
					return
				}
				if next < size {
					fail(fmt.Errorf("Scan during Append gave %d entries after Size reported %d", next, size))
					return
				}
				// Every hash of the entries counted is readable.
				count := tlog.StoredHashIndex(0, int64(size))
				indexes := []int64{}
				for x := int64(r); x < count; x += 7 {
					indexes = append(indexes, x)
				}
				hashes, err := s.ReadHashes(ctx, indexes)
				if err != nil {
					fail(fmt.Errorf("ReadHashes during Append, after Size reported %d: %v", size, err))
					return
				}
				for i, x := range indexes {
					if i >= len(hashes) || hashes[i] != tr.hashes[x] {
						fail(fmt.Errorf("ReadHashes during Append: hash %d differs from the one appended", x))
						return
					}
				}
				cpSize, signed, err := s.LatestCheckpoint(ctx)
				if err != nil {
					fail(fmt.Errorf("LatestCheckpoint during Append: %v", err))
					return
				}
				if signed != nil && (cpSize%30 != 0 || cpSize > n) {
					fail(fmt.Errorf("LatestCheckpoint during Append gave size %d, which was never added", cpSize))
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	wantSize(t, s, n)
	wantEntries(t, "Scan after the appends", scan(t, s, 0, n), all)
	wantHashes(t, s, tr, n)
	if got := storedCheckpoints(t, s); len(got) != n/30 {
		t.Errorf("got %d checkpoints, want %d", len(got), n/30)
	}
}

// verify runs audit.Verify and fails the test unless it passes with want
// records.
func verify(t *testing.T, s audit.Store, opts audit.VerifyOptions, want uint64) audit.VerifyResult {
	t.Helper()
	res, err := audit.Verify(t.Context(), s, opts)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Records != want {
		t.Fatalf("Verify checked %d records, want %d", res.Records, want)
	}
	return res
}

func testLogConcurrentAndReopen(t *testing.T, s audit.Store) {
	const n = 1000
	ctx := t.Context()
	l, err := audit.NewLog(ctx, s, audit.Options{Namespace: "audittest"})
	if err != nil {
		t.Fatalf("NewLog: %v", err)
	}

	seqs := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			rec, err := l.Log(ctx, audit.Record{
				Event:   "audittest.log",
				Agent:   fmt.Sprintf("agent-%d", i),
				Outcome: audit.OutcomeAllowed,
				Tokens:  int64(i),
			})
			seqs[i], errs[i] = rec.Seq, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Log: %v", err)
	}

	// Every call got its own Seq, and the record at that Seq is its own.
	sorted := slices.Sorted(slices.Values(seqs))
	for i, seq := range sorted {
		if seq != uint64(i) {
			t.Fatalf("Seqs of %d concurrent Log calls, sorted: got %d at position %d, want %d", n, seq, i, i)
		}
	}
	wantSize(t, s, n)
	for _, e := range scan(t, s, 0, n) {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			t.Fatalf("DecodeRecord(entry %d): %v", e.Seq, err)
		}
		var i int
		if _, err := fmt.Sscanf(r.Agent, "agent-%d", &i); err != nil || i < 0 || i >= n || seqs[i] != e.Seq {
			t.Fatalf("entry %d holds the record of agent %q, which Log did not give that Seq", e.Seq, r.Agent)
		}
	}
	size, root := l.Root()
	if size != n {
		t.Fatalf("Root: got size %d, want %d", size, n)
	}
	if res := verify(t, s, audit.VerifyOptions{}, n); res.Root != root {
		t.Errorf("Verify: got root %v, want the log's %v", res.Root, root)
	}
	if got, err := l.Verify(ctx); got != n || err != nil {
		t.Fatalf("Log.Verify = %d, %v; want %d, nil", got, err, n)
	}

	// A new Log over the same store continues where the first stopped,
	// with the same tree.
	l2, err := audit.NewLog(ctx, s, audit.Options{Namespace: "audittest"})
	if err != nil {
		t.Fatalf("NewLog over the same store: %v", err)
	}
	if gotSize, gotRoot := l2.Root(); gotSize != n || gotRoot != root {
		t.Errorf("reopened Log: Root = %d, %v; want %d, %v", gotSize, gotRoot, n, root)
	}
	if got, err := l2.Verify(ctx); got != n || err != nil {
		t.Errorf("reopened Log: Verify = %d, %v; want %d, nil", got, err, n)
	}
	for i := range uint64(3) {
		rec, err := l2.Log(ctx, audit.Record{Event: "audittest.reopened"})
		if err != nil {
			t.Fatalf("reopened Log: Log: %v", err)
		}
		if rec.Seq != n+i {
			t.Errorf("reopened Log: got Seq %d, want %d", rec.Seq, n+i)
		}
	}
	if got, err := l2.Verify(ctx); got != n+3 || err != nil {
		t.Errorf("reopened Log: Verify after Log = %d, %v; want %d, nil", got, err, n+3)
	}
	_, root2 := l2.Root()
	if res := verify(t, s, audit.VerifyOptions{}, n+3); res.Root != root2 {
		t.Errorf("Verify after reopening: got root %v, want the log's %v", res.Root, root2)
	}
}

func testLogSignedCheckpoints(t *testing.T, s audit.Store) {
	ctx := t.Context()
	const origin = "audittest.example/log"
	signer, verifier := testKey(t, origin)
	opts := audit.Options{Namespace: "audittest", Signer: signer, Verifier: verifier, CheckpointEvery: 7, CheckpointInterval: -1}
	l, err := audit.NewLog(ctx, s, opts)
	if err != nil {
		t.Fatalf("NewLog: %v", err)
	}
	// One at a time, so that the checkpoints' sizes are known.
	logN := func(l *audit.Log, n int) {
		t.Helper()
		for i := range n {
			if _, err := l.Log(ctx, audit.Record{Event: "audittest.signed", Tokens: int64(i)}); err != nil {
				t.Fatalf("Log: %v", err)
			}
		}
	}
	logN(l, 50)
	if _, err := l.Checkpoint(ctx); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	wantSizes := func(want []uint64) []signedCheckpoint {
		t.Helper()
		cps := storedCheckpoints(t, s)
		var got []uint64
		for _, c := range cps {
			got = append(got, c.size)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("stored checkpoints have sizes %v, want %v", got, want)
		}
		return cps
	}
	// A checkpoint every 7 records, and the one Checkpoint signed; each
	// commits to the tree the store holds at its size.
	cps := wantSizes([]uint64{7, 14, 21, 28, 35, 42, 49, 50})
	for _, c := range cps {
		cp, err := audit.OpenCheckpoint(c.signed, verifier)
		if err != nil {
			t.Fatalf("stored checkpoint of size %d: %v", c.size, err)
		}
		root, err := tlog.TreeHash(int64(c.size), storeReader{ctx, s})
		if err != nil {
			t.Fatalf("tlog.TreeHash(%d) over the store: %v", c.size, err)
		}
		if want := (audit.Checkpoint{Origin: origin, Size: c.size, Root: root}); cp != want {
			t.Errorf("stored checkpoint of size %d = %+v, want %+v", c.size, cp, want)
		}
	}
	res := verify(t, s, audit.VerifyOptions{Verifier: verifier, Origin: origin}, 50)
	if res.Checkpoints != len(cps) || res.Latest.Size != 50 || res.Uncovered() != 0 {
		t.Errorf("Verify = %+v (Uncovered %d), want %d checkpoints, the latest of size 50, none uncovered", res, res.Uncovered(), len(cps))
	}

	// A reopened log checks the latest checkpoint, continues from it, and
	// signs more.
	l2, err := audit.NewLog(ctx, s, opts)
	if err != nil {
		t.Fatalf("NewLog over a signed store: %v", err)
	}
	logN(l2, 20)
	if _, err := l2.Checkpoint(ctx); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	wantSizes([]uint64{7, 14, 21, 28, 35, 42, 49, 50, 57, 64, 70})
	res = verify(t, s, audit.VerifyOptions{Verifier: verifier, Trusted: [][]byte{cps[len(cps)-1].signed}}, 70)
	if res.Latest.Size != 70 || res.Checkpoints != 12 {
		t.Errorf("Verify after reopening: %d checkpoints, the latest of size %d; want 12 (one trusted), 70", res.Checkpoints, res.Latest.Size)
	}
	if got, err := l2.Verify(ctx); got != 70 || err != nil {
		t.Errorf("reopened Log: Verify = %d, %v; want 70, nil", got, err)
	}
}

func testLogRefusesTruncatedStore(t *testing.T, s audit.Store) {
	ctx := t.Context()
	signer, verifier := testKey(t, "audittest")
	all, tr := makeEntries(12)
	appendEntries(t, s, all[:8])
	// A checkpoint of 12 records over a store holding 8: the last four
	// were removed.
	if err := s.AddCheckpoint(ctx, 12, sign(t, signer, tr, 12)); err != nil {
		t.Fatalf("AddCheckpoint: %v", err)
	}
	_, err := audit.NewLog(ctx, s, audit.Options{Signer: signer, Verifier: verifier, Origin: "audittest"})
	if err == nil {
		t.Errorf("NewLog over a store missing records its checkpoint covers = nil error, want error")
	}
	_, err = audit.Verify(ctx, s, audit.VerifyOptions{Verifier: verifier})
	var ve *audit.VerifyError
	if !errors.As(err, &ve) || ve.Seq != 8 {
		t.Errorf("Verify: got error %v, want a *VerifyError naming record 8", err)
	}
}

// queryRecords returns the records the Query test logs: every filterable
// field takes a few values, and some attributes and reasons look like
// fields.
func queryRecords(n int) []audit.Record {
	// A NUL is valid in a record, though not in a PostgreSQL text; and
	// a store that maps it to U+FFFD in an index must still tell the two
	// apart.
	agents := []string{"alice", "bob", "carol", "Alice", "alice ", "al\x00ice", "al\uFFFDice"}
	tools := []string{"search", "refund", "fetch", "re\x00fund"}
	sessions := []string{"s0", "s1", "s2", "s\x003", "s\uFFFD3"}
	events := []string{"tool.call", "tool.call", "trust.assign", "budget.spend"}
	namespaces := []string{"", "app", "other"}
	outcomes := []audit.Outcome{audit.OutcomeAllowed, audit.OutcomeDenied, ""}
	recs := make([]audit.Record, n)
	for i := range recs {
		r := audit.Record{
			Event:     events[i%len(events)],
			Agent:     agents[i*7%len(agents)],
			Session:   sessions[i*3%len(sessions)],
			Tool:      tools[i*5%len(tools)],
			Namespace: namespaces[i*11%len(namespaces)],
			Outcome:   outcomes[i*13%len(outcomes)],
			Tokens:    int64(i),
		}
		if i%9 == 0 {
			r.Attrs = map[string]string{"agent": "alice", "tool": "search", "session": "s1", "outcome": "deny"}
		}
		if i%10 == 0 {
			r.Reason = `"agent":"bob","event":"trust.assign"`
		}
		recs[i] = r
	}
	return recs
}

// scanOnly hides whether a store is an audit.Querier, so audit.Query
// scans it.
type scanOnly struct{ audit.Store }

func testQuery(t *testing.T, s audit.Store) {
	ctx := t.Context()
	start := time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * time.Second) }
	recs := queryRecords(150)

	// The first records are appended by hand, without Entry.Record, the
	// rest by a Log, which may hand the store the decoded record.
	tr := new(Tree)
	var entries []audit.Entry
	for i, r := range recs[:40] {
		r.Time = at(i)
		if r.Namespace == "" {
			r.Namespace = "app"
		}
		entries = append(entries, tr.Add(encode(&r)))
	}
	appendEntries(t, s, entries)
	var mu sync.Mutex
	next := 40
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		next++
		return at(next - 1)
	}
	l, err := audit.NewLog(ctx, s, audit.Options{Namespace: "app", Clock: clock})
	if err != nil {
		t.Fatalf("NewLog: %v", err)
	}
	for _, r := range recs[40:] {
		if _, err := l.Log(ctx, r); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}

	filters := []audit.Filter{
		{},
		{Agent: "alice"},
		{Agent: "Alice"},
		{Agent: "alice "},
		{Agent: "nobody"},
		{Agent: "al\x00ice"},
		{Agent: "al\uFFFDice"},
		{Session: "s1"},
		{Session: "s\x003"},
		{Session: "s\uFFFD3"},
		{Tool: "refund"},
		{Tool: "re\x00fund", Session: "s\x003"},
		{Event: "trust.assign"},
		{Namespace: "other"},
		{Namespace: "app"},
		{Outcome: audit.OutcomeDenied},
		{Outcome: audit.OutcomeAllowed},
		{Agent: "alice", Tool: "search", Outcome: audit.OutcomeDenied},
		{Agent: "bob", Session: "s1", Event: "tool.call"},
		{Since: at(30)},
		{Until: at(45)},
		{Since: at(20), Until: at(120), Agent: "carol"},
		{Since: at(39), Until: at(41)},
		{Since: at(50).Add(1), Until: at(50).Add(2)},
		{Since: at(150)},
		{Since: at(10).In(time.FixedZone("east", 9*3600)), Until: at(90).In(time.FixedZone("west", -7*3600)), Namespace: "other"},
	}
	_, isQuerier := s.(audit.Querier)
	for i, f := range filters {
		for _, limit := range []int{0, 1, 7, audit.MaxLimit} {
			f := f
			f.Limit = limit
			t.Run(fmt.Sprintf("filter %d limit %d", i, limit), func(t *testing.T) {
				want := queryPages(t, scanOnly{s}, f)
				if !isQuerier {
					return // the scan is what Query does; query_test.go checks it
				}
				got := queryPages(t, s, f)
				if !slices.EqualFunc(got, want, func(a, b audit.Page) bool {
					return a.Next == b.Next && slices.EqualFunc(a.Records, b.Records, equalRecords)
				}) {
					t.Errorf("Query(%+v) through the store's indexes = %v\nwant what a scan finds, %v", f, pageSeqs(got), pageSeqs(want))
				}
			})
		}
	}
}

func equalRecords(a, b audit.Record) bool {
	return bytes.Equal(encode(&a), encode(&b)) && a.Seq == b.Seq
}

// queryPages follows Next from the first page to the last and returns
// every page.
func queryPages(t *testing.T, s audit.Store, f audit.Filter) []audit.Page {
	t.Helper()
	var pages []audit.Page
	for {
		page, err := audit.Query(t.Context(), s, f)
		if err != nil {
			t.Fatalf("Query(%+v): %v", f, err)
		}
		pages = append(pages, page)
		if page.Next == "" {
			return pages
		}
		if len(pages) > 200 {
			t.Fatalf("Query(%+v): paging did not end after %d pages", f, len(pages))
		}
		f.Cursor = page.Next
	}
}

// pageSeqs returns the Seqs of pages' records, a slice a page.
func pageSeqs(pages []audit.Page) [][]uint64 {
	var out [][]uint64
	for _, p := range pages {
		seqs := []uint64{}
		for _, r := range p.Records {
			seqs = append(seqs, r.Seq)
		}
		out = append(out, seqs)
	}
	return out
}
