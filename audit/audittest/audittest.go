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
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// Run checks that the stores newStore returns behave as audit.Store
// documents, using only that interface, and that an audit.Log over them
// appends and verifies. It calls newStore once per subtest; newStore must
// return a new, empty store and arrange with t.Cleanup for whatever must
// happen when the subtest ends, such as closing the store.
func Run(t *testing.T, newStore func(t *testing.T) audit.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, audit.Store)
	}{
		{"EmptyHead", testEmptyHead},
		{"AppendContinuesLog", testAppendContinuesLog},
		{"AppendRejectsWrongSeq", testAppendRejectsWrongSeq},
		{"AppendDoesNotKeepData", testAppendDoesNotKeepData},
		{"ScanRange", testScanRange},
		{"ScanStopsAtError", testScanStopsAtError},
		{"ScanCanceled", testScanCanceled},
		{"ConcurrentScanAndAppend", testConcurrentScanAndAppend},
		{"LogConcurrentAndReopen", testLogConcurrentAndReopen},
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
	b, err := audit.EncodeRecord(nil, &r)
	if err != nil {
		panic(fmt.Sprintf("audittest: encoding record %d: %v", seq, err))
	}
	return b
}

// chainHash is the entry hash audit.Log documents:
// SHA-256(0x01 || prev || SHA-256(0x00 || data)).
func chainHash(prev audit.Hash, data []byte) audit.Hash {
	leaf := sha256.Sum256(append([]byte{0x00}, data...))
	node := append(append([]byte{0x01}, prev[:]...), leaf[:]...)
	return sha256.Sum256(node)
}

// makeEntries returns entries 0 to n-1 of the suite's log.
func makeEntries(n int) []audit.Entry {
	entries := make([]audit.Entry, n)
	var prev audit.Hash
	for i := range entries {
		data := recordData(uint64(i))
		prev = chainHash(prev, data)
		entries[i] = audit.Entry{Seq: uint64(i), Data: data, Hash: prev}
	}
	return entries
}

// cloneEntries copies entries, Data included, so that a store keeping the
// slices it is given cannot change what the test expects.
func cloneEntries(entries []audit.Entry) []audit.Entry {
	out := make([]audit.Entry, len(entries))
	for i, e := range entries {
		e.Data = bytes.Clone(e.Data)
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
		e.Data = bytes.Clone(e.Data) // valid only until fn returns
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan(%d, %d): %v", from, to, err)
	}
	return got
}

// wantHead fails the test unless the store's head is want.
func wantHead(t *testing.T, s audit.Store, size uint64, last audit.Hash) {
	t.Helper()
	gotSize, gotLast, err := s.Head(t.Context())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	if gotSize != size || gotLast != last {
		t.Errorf("Head = (%d, %v), want (%d, %v)", gotSize, gotLast, size, last)
	}
}

// wantEntries fails the test unless got and want hold the same entries.
func wantEntries(t *testing.T, what string, got, want []audit.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d entries, want %d", what, len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g, w := got[i], want[i]
		switch {
		case g.Seq != w.Seq:
			t.Errorf("%s: entry %d: got Seq %d, want %d", what, i, g.Seq, w.Seq)
		case !bytes.Equal(g.Data, w.Data):
			t.Errorf("%s: entry %d: got Data %q, want %q", what, i, g.Data, w.Data)
		case g.Hash != w.Hash:
			t.Errorf("%s: entry %d: got Hash %v, want %v", what, i, g.Hash, w.Hash)
		default:
			continue
		}
		return // one mismatch is enough; the rest usually follow from it
	}
}

func testEmptyHead(t *testing.T, s audit.Store) {
	wantHead(t, s, 0, audit.Hash{})
	if got := scan(t, s, 0, 10); len(got) != 0 {
		t.Errorf("Scan(0, 10) of an empty store: got %d entries, want 0", len(got))
	}
}

func testAppendContinuesLog(t *testing.T, s audit.Store) {
	all := makeEntries(8)
	for _, batch := range [][2]int{{0, 1}, {1, 4}, {4, 5}, {5, 8}} {
		appendEntries(t, s, all[batch[0]:batch[1]])
		wantHead(t, s, uint64(batch[1]), all[batch[1]-1].Hash)
	}
	wantEntries(t, "Scan(0, 8)", scan(t, s, 0, 8), all)
}

func testAppendRejectsWrongSeq(t *testing.T, s audit.Store) {
	all := makeEntries(6)
	// e returns entry i of the log under the given Seq.
	e := func(i int, seq uint64) audit.Entry {
		x := all[i]
		x.Seq = seq
		return x
	}
	if err := s.Append(t.Context(), cloneEntries([]audit.Entry{e(0, 1)})); err == nil {
		t.Errorf("Append(Seq 1) to an empty store = nil error, want error")
	}
	wantHead(t, s, 0, audit.Hash{})

	appendEntries(t, s, all[:3])
	tests := []struct {
		name    string
		entries []audit.Entry
	}{
		{"gap", []audit.Entry{e(3, 4)}},
		{"far gap", []audit.Entry{e(3, 1<<40)}},
		{"max seq", []audit.Entry{e(3, math.MaxUint64)}},
		{"repeat last", []audit.Entry{e(3, 2)}},
		{"repeat first", []audit.Entry{e(3, 0)}},
		{"batch starting with a gap", []audit.Entry{e(3, 4), e(4, 5)}},
		{"batch starting with a repeat", []audit.Entry{e(2, 2), e(3, 3)}},
		{"batch with a later gap", []audit.Entry{e(3, 3), e(4, 4), e(5, 6)}},
		{"batch with a later repeat", []audit.Entry{e(3, 3), e(4, 4), e(5, 4)}},
		{"batch repeating its first", []audit.Entry{e(3, 3), e(4, 3)}},
		{"batch out of order", []audit.Entry{e(4, 4), e(3, 3)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Append(t.Context(), cloneEntries(tt.entries)); err == nil {
				t.Errorf("Append = nil error, want error")
			}
			// Nothing of the batch may be stored, not even its valid
			// leading entries.
			wantHead(t, s, 3, all[2].Hash)
			wantEntries(t, "Scan(0, 10)", scan(t, s, 0, 10), all[:3])
		})
	}

	// The store is still usable after refusing.
	appendEntries(t, s, all[3:])
	wantHead(t, s, 6, all[5].Hash)
	wantEntries(t, "Scan(0, 6)", scan(t, s, 0, 6), all)
}

func testAppendDoesNotKeepData(t *testing.T, s audit.Store) {
	want := makeEntries(20)
	// Like audit.Log, reuse one buffer for every entry's Data, and
	// scribble over it after each Append.
	buf := make([]byte, 0, 64<<10)
	for _, w := range want {
		buf = append(buf[:0], w.Data...)
		e := w
		e.Data = buf
		if err := s.Append(t.Context(), []audit.Entry{e}); err != nil {
			t.Fatalf("Append(entry %d): %v", e.Seq, err)
		}
		for i := range buf {
			buf[i] = 'x'
		}
	}
	wantEntries(t, "Scan(0, 20)", scan(t, s, 0, 20), want)

	// The same for a batch.
	more := makeEntries(25)[20:]
	batch := cloneEntries(more)
	if err := s.Append(t.Context(), batch); err != nil {
		t.Fatalf("Append(entries 20 to 24): %v", err)
	}
	for _, e := range batch {
		for i := range e.Data {
			e.Data[i] = 0
		}
	}
	wantEntries(t, "Scan(20, 25)", scan(t, s, 20, 25), more)
}

func testScanRange(t *testing.T, s audit.Store) {
	all := makeEntries(10)
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
	}
	for _, tt := range tests {
		what := fmt.Sprintf("Scan(%d, %d)", tt.from, tt.to)
		t.Run(what, func(t *testing.T) {
			wantEntries(t, what, scan(t, s, tt.from, tt.to), tt.want)
		})
	}
}

func testScanStopsAtError(t *testing.T, s audit.Store) {
	appendEntries(t, s, makeEntries(10))
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
			// Callers such as audit.Log.Query compare the error with
			// ==, so the store must return it unwrapped.
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
	all := makeEntries(n)
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

func testConcurrentScanAndAppend(t *testing.T, s audit.Store) {
	const n = 300
	all := makeEntries(n)
	ctx := t.Context()

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
		}
	})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				size, last, err := s.Head(ctx)
				if err != nil {
					fail(fmt.Errorf("Head: %v", err))
					return
				}
				if size > n || (size == 0 && last != audit.Hash{}) || (size > 0 && last != all[size-1].Hash) {
					fail(fmt.Errorf("Head = (%d, %v), which is no head of the log being appended", size, last))
					return
				}
				next := uint64(0)
				err = s.Scan(ctx, 0, n+10, func(e audit.Entry) error {
					if e.Seq != next || e.Seq >= n {
						return fmt.Errorf("got entry %d, want %d", e.Seq, next)
					}
					if !bytes.Equal(e.Data, all[e.Seq].Data) || e.Hash != all[e.Seq].Hash {
						return fmt.Errorf("entry %d differs from the one appended", e.Seq)
					}
					next++
					return nil
				})
				if err != nil {
					fail(fmt.Errorf("Scan during Append: %v", err))
					return
				}
				if next < size {
					fail(fmt.Errorf("Scan during Append gave %d entries after Head reported %d", next, size))
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	wantHead(t, s, n, all[n-1].Hash)
	wantEntries(t, "Scan after the appends", scan(t, s, 0, n), all)
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
	for _, e := range scan(t, s, 0, n) {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			t.Fatalf("DecodeRecord(entry %d): %v", e.Seq, err)
		}
		var i int
		if _, err := fmt.Sscanf(r.Agent, "agent-%d", &i); err != nil || seqs[i] != e.Seq {
			t.Fatalf("entry %d holds the record of agent %q, which Log gave Seq %d", e.Seq, r.Agent, seqs[i])
		}
	}
	if got, err := l.Verify(ctx); got != n || err != nil {
		t.Fatalf("Verify = %d, %v; want %d, nil", got, err, n)
	}

	// A new Log over the same store continues where the first stopped.
	l2, err := audit.NewLog(ctx, s, audit.Options{Namespace: "audittest"})
	if err != nil {
		t.Fatalf("NewLog over the same store: %v", err)
	}
	if got := l2.Size(); got != n {
		t.Errorf("reopened Log: got Size %d, want %d", got, n)
	}
	if got, err := l2.Verify(ctx); got != n || err != nil {
		t.Errorf("reopened Log: Verify = %d, %v; want %d, nil", got, err, n)
	}
	rec, err := l2.Log(ctx, audit.Record{Event: "audittest.reopened"})
	if err != nil {
		t.Fatalf("reopened Log: Log: %v", err)
	}
	if rec.Seq != n {
		t.Errorf("reopened Log: got Seq %d, want %d", rec.Seq, n)
	}
	if got, err := l2.Verify(ctx); got != n+1 || err != nil {
		t.Errorf("reopened Log: Verify after Log = %d, %v; want %d, nil", got, err, n+1)
	}
}
