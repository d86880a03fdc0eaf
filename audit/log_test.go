package audit_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/google/go-cmp/cmp"
)

// tickClock returns a clock that starts at start and moves one second
// forward on every call.
func tickClock(start time.Time) func() time.Time {
	var mu sync.Mutex
	next := start
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := next
		next = next.Add(time.Second)
		return t
	}
}

func newLog(t testing.TB, s audit.Store, opts audit.Options) *audit.Log {
	t.Helper()
	l, err := audit.NewLog(context.Background(), s, opts)
	if err != nil {
		t.Fatalf("NewLog: %v", err)
	}
	return l
}

// storedRecords decodes every record in s.
func storedRecords(t *testing.T, s audit.Store) []audit.Record {
	t.Helper()
	var recs []audit.Record
	err := s.Scan(t.Context(), 0, 1<<62, func(e audit.Entry) error {
		r, err := audit.DecodeRecord(e.Data)
		if err != nil {
			return err
		}
		r.Seq = e.Seq
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return recs
}

func TestLogStampsRecords(t *testing.T) {
	// The clock runs an hour ahead of UTC; records must be in UTC anyway.
	east := time.FixedZone("east", 3600)
	start := time.Date(2025, 3, 4, 6, 7, 8, 9, east)
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Namespace: "app", Clock: tickClock(start)})

	in := []audit.Record{
		{Event: "tool.call", Agent: "alice", Outcome: audit.OutcomeAllowed, Tokens: 5, Attrs: map[string]string{"k": "v"}},
		// The caller's Seq and Time are replaced, its namespace kept.
		{Event: "trust.assign", Namespace: "other", Seq: 42, Time: time.Unix(1, 0)},
		{Event: "tool.call", Agent: "bob", Outcome: audit.OutcomeDenied},
	}
	want := []audit.Record{
		{Seq: 0, Time: start.UTC(), Namespace: "app", Event: "tool.call", Agent: "alice", Outcome: audit.OutcomeAllowed, Tokens: 5, Attrs: map[string]string{"k": "v"}},
		{Seq: 1, Time: start.Add(time.Second).UTC(), Namespace: "other", Event: "trust.assign"},
		{Seq: 2, Time: start.Add(2 * time.Second).UTC(), Namespace: "app", Event: "tool.call", Agent: "bob", Outcome: audit.OutcomeDenied},
	}
	for i, rec := range in {
		got, err := l.Log(t.Context(), rec)
		if err != nil {
			t.Fatalf("Log(%+v): %v", rec, err)
		}
		if diff := cmp.Diff(want[i], got); diff != "" {
			t.Errorf("Log(%+v) mismatch (-want +got):\n%s", rec, diff)
		}
		if got.Time.Location() != time.UTC {
			t.Errorf("Log(%+v): got time in %v, want UTC", rec, got.Time.Location())
		}
	}
	if got := l.Size(); got != uint64(len(want)) {
		t.Errorf("Size = %d, want %d", got, len(want))
	}
	if got := l.Namespace(); got != "app" {
		t.Errorf("Namespace = %q, want %q", got, "app")
	}
	// What is stored is what Log returned.
	if diff := cmp.Diff(want, storedRecords(t, s)); diff != "" {
		t.Errorf("stored records mismatch (-want +got):\n%s", diff)
	}
}

func TestLogDefaultClock(t *testing.T) {
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	before := time.Now()
	rec, err := l.Log(t.Context(), audit.Record{Event: "e"})
	after := time.Now()
	if err != nil {
		t.Fatalf("Log: %v", err)
	}
	if rec.Time.Before(before.Truncate(0)) || rec.Time.After(after) || rec.Time.Location() != time.UTC {
		t.Errorf("Log stamped %v, want a UTC time between %v and %v", rec.Time, before, after)
	}
	if rec.Namespace != "" {
		t.Errorf("Log without a namespace: got Namespace %q, want empty", rec.Namespace)
	}
}

func TestNewLogErrors(t *testing.T) {
	if _, err := audit.NewLog(t.Context(), nil, audit.Options{}); err == nil {
		t.Errorf("NewLog(nil store) = nil error, want error")
	}
	_, err := audit.NewLog(t.Context(), audit.NewMemoryStore(), audit.Options{Namespace: "ns\xff"})
	if !errors.Is(err, audit.ErrInvalidRecord) {
		t.Errorf("NewLog with an invalid namespace: got error %v, want %v", err, audit.ErrInvalidRecord)
	}
	errHead := errors.New("head failed")
	_, err = audit.NewLog(t.Context(), &faultyStore{Store: audit.NewMemoryStore(), headErr: errHead}, audit.Options{})
	if !errors.Is(err, errHead) {
		t.Errorf("NewLog over a store whose Head fails: got error %v, want %v", err, errHead)
	}
}

func TestLogInvalidRecord(t *testing.T) {
	tests := []struct {
		name string
		rec  audit.Record
	}{
		{"empty event", audit.Record{Agent: "alice"}},
		{"unknown outcome", audit.Record{Event: "e", Outcome: "maybe"}},
		{"negative tokens", audit.Record{Event: "e", Tokens: -1}},
		{"invalid UTF-8 event", audit.Record{Event: "e\xff"}},
		{"invalid UTF-8 namespace", audit.Record{Event: "e", Namespace: "\xff"}},
		{"invalid UTF-8 reason", audit.Record{Event: "e", Reason: "\xc3("}},
		{"invalid UTF-8 attr value", audit.Record{Event: "e", Attrs: map[string]string{"k": "\xff"}}},
		{"empty attr key", audit.Record{Event: "e", Attrs: map[string]string{"": "v"}}},
		{"larger than MaxRecordSize", audit.Record{Event: "e", Reason: strings.Repeat("x", audit.MaxRecordSize)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := audit.NewMemoryStore()
			l := newLog(t, s, audit.Options{Namespace: "app"})
			_, err := l.Log(t.Context(), tt.rec)
			if !errors.Is(err, audit.ErrInvalidRecord) {
				t.Errorf("Log: got error %v, want %v", err, audit.ErrInvalidRecord)
			}
			if errors.Is(err, audit.ErrUnavailable) {
				t.Errorf("Log: error %v matches %v, want it not to", err, audit.ErrUnavailable)
			}
			// A refused record is the caller's fault, not the log's.
			if err := l.Err(); err != nil {
				t.Errorf("Err after an invalid record = %v, want nil", err)
			}
			if got := l.Size(); got != 0 {
				t.Errorf("Size = %d, want 0", got)
			}
			if size, _, _ := s.Head(t.Context()); size != 0 {
				t.Errorf("store size = %d, want 0", size)
			}
		})
	}
}

// faultyStore wraps a Store and fails its calls on demand.
type faultyStore struct {
	audit.Store
	mu        sync.Mutex
	headErr   error
	appendErr error
	scanErr   error
}

func (s *faultyStore) fail(appendErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendErr = appendErr
}

func (s *faultyStore) Head(ctx context.Context) (uint64, audit.Hash, error) {
	if s.headErr != nil {
		return 0, audit.Hash{}, s.headErr
	}
	return s.Store.Head(ctx)
}

func (s *faultyStore) Append(ctx context.Context, entries []audit.Entry) error {
	s.mu.Lock()
	err := s.appendErr
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Store.Append(ctx, entries)
}

func (s *faultyStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if s.scanErr != nil {
		return s.scanErr
	}
	return s.Store.Scan(ctx, from, to, fn)
}

func TestLogStoreFailure(t *testing.T) {
	mem := audit.NewMemoryStore()
	s := &faultyStore{Store: mem}
	l := newLog(t, s, audit.Options{Namespace: "app"})
	ctx := t.Context()

	for _, agent := range []string{"a0", "a1"} {
		if _, err := l.Log(ctx, audit.Record{Event: "e", Agent: agent}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err before any failure = %v, want nil", err)
	}

	errDisk := errors.New("disk full")
	s.fail(errDisk)
	for range 2 { // the failure persists across calls
		rec, err := l.Log(ctx, audit.Record{Event: "e", Agent: "lost"})
		if !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errDisk) {
			t.Errorf("Log with a failing store: got error %v, want one matching %v and %v", err, audit.ErrUnavailable, errDisk)
		}
		if diff := cmp.Diff(audit.Record{}, rec); diff != "" {
			t.Errorf("Log with a failing store returned a record (-want +got):\n%s", diff)
		}
		if err := l.Err(); !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errDisk) {
			t.Errorf("Err after a failed append = %v, want one matching %v and %v", err, audit.ErrUnavailable, errDisk)
		}
		if got := l.Size(); got != 2 {
			t.Errorf("Size after a failed append = %d, want 2", got)
		}
		if size, _, _ := mem.Head(ctx); size != 2 {
			t.Errorf("store size after a failed append = %d, want 2", size)
		}
	}
	// An invalid record neither clears nor replaces the failure.
	if _, err := l.Log(ctx, audit.Record{}); !errors.Is(err, audit.ErrInvalidRecord) {
		t.Errorf("Log(invalid record): got error %v, want %v", err, audit.ErrInvalidRecord)
	}
	if err := l.Err(); !errors.Is(err, errDisk) {
		t.Errorf("Err after an invalid record = %v, want %v", err, errDisk)
	}

	s.fail(nil)
	rec, err := l.Log(ctx, audit.Record{Event: "e", Agent: "a2"})
	if err != nil {
		t.Fatalf("Log after the store recovered: %v", err)
	}
	if rec.Seq != 2 {
		t.Errorf("Log after the store recovered: got Seq %d, want 2", rec.Seq)
	}
	if err := l.Err(); err != nil {
		t.Errorf("Err after the store recovered = %v, want nil", err)
	}
	if n, err := l.Verify(ctx); n != 3 || err != nil {
		t.Errorf("Verify = %d, %v; want 3, nil", n, err)
	}
	var agents []string
	for _, r := range storedRecords(t, mem) {
		agents = append(agents, r.Agent)
	}
	if diff := cmp.Diff([]string{"a0", "a1", "a2"}, agents); diff != "" {
		t.Errorf("stored agents mismatch (-want +got):\n%s", diff)
	}
}

func TestLogCanceledContext(t *testing.T) {
	// The memory store ignores the context; a store that honours it
	// fails like any other store failure.
	s := &faultyStore{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{})
	s.fail(context.Canceled)
	_, err := l.Log(t.Context(), audit.Record{Event: "e"})
	if !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("Log: got error %v, want one matching %v and %v", err, audit.ErrUnavailable, context.Canceled)
	}
}

// entryHash is the chain hash Log documents, computed independently.
func entryHash(prev audit.Hash, data []byte) audit.Hash {
	leaf := sha256.Sum256(append([]byte{0x00}, data...))
	return sha256.Sum256(append(append([]byte{0x01}, prev[:]...), leaf[:]...))
}

func TestLogHashChain(t *testing.T) {
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Clock: tickClock(t0)})
	for _, ev := range []string{"a", "b", "c"} {
		if _, err := l.Log(t.Context(), audit.Record{Event: ev}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	var prev audit.Hash
	err := s.Scan(t.Context(), 0, 3, func(e audit.Entry) error {
		if want := entryHash(prev, e.Data); e.Hash != want {
			t.Errorf("entry %d: got hash %v, want %v", e.Seq, e.Hash, want)
		}
		prev = e.Hash
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	size, last, err := s.Head(t.Context())
	if err != nil || size != 3 || last != prev {
		t.Errorf("Head = %d, %v, %v; want 3, %v, nil", size, last, err, prev)
	}
}

// tamperStore serves entries, a doctored copy of a log, from Scan and
// claims size from Head; until they are set, it passes calls through.
type tamperStore struct {
	audit.Store
	entries []audit.Entry
	size    uint64
}

func (s *tamperStore) Head(ctx context.Context) (uint64, audit.Hash, error) {
	if s.entries == nil {
		return s.Store.Head(ctx)
	}
	if s.size == 0 {
		return 0, audit.Hash{}, nil
	}
	return s.size, s.entries[s.size-1].Hash, nil
}

func (s *tamperStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if s.entries == nil {
		return s.Store.Scan(ctx, from, to, fn)
	}
	for _, e := range s.entries {
		if e.Seq >= from && e.Seq < to {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// renumber sets every entry's Seq to its position.
func renumber(entries []audit.Entry) []audit.Entry {
	for i := range entries {
		entries[i].Seq = uint64(i)
	}
	return entries
}

// rechain recomputes the hashes of entries from position i on, as a forger
// who knows the hash construction would.
func rechain(entries []audit.Entry, i int) []audit.Entry {
	var prev audit.Hash
	if i > 0 {
		prev = entries[i-1].Hash
	}
	for ; i < len(entries); i++ {
		entries[i].Hash = entryHash(prev, entries[i].Data)
		prev = entries[i].Hash
	}
	return entries
}

func TestVerifyDetectsTampering(t *testing.T) {
	const n, k = 6, 2
	forged := []byte(`{"agent":"mallory","event":"tool.call","outcome":"allow","time":"2025-01-02T03:04:05.000000000Z"}`)

	tests := []struct {
		name string
		// tamper doctors a copy of the log's entries.
		tamper func([]audit.Entry) []audit.Entry
		// truncate makes the store's Head claim only the entries tamper
		// returns.
		truncate bool
		wantSeq  uint64 // the Seq the VerifyError names
		wantN    uint64 // the count Verify returns
	}{
		{
			name: "edit a byte, still canonical",
			tamper: func(es []audit.Entry) []audit.Entry {
				i := bytes.Index(es[k].Data, []byte("agent-"))
				es[k].Data[i] = 'A'
				return es
			},
			wantSeq: k, wantN: k,
		},
		{
			name: "edit a byte, no longer canonical",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[k].Data[len(es[k].Data)-1] = ' '
				return es
			},
			wantSeq: k, wantN: k,
		},
		{
			name: "edit the first record",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[0].Data = bytes.Replace(es[0].Data, []byte("allow"), []byte("deny"), 1)
				return es
			},
			wantSeq: 0, wantN: 0,
		},
		{
			name: "edit the last record",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[n-1].Data = bytes.Replace(es[n-1].Data, []byte("allow"), []byte("deny"), 1)
				return es
			},
			wantSeq: n - 1, wantN: n - 1,
		},
		{
			name: "edit a stored hash",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[k].Hash[0] ^= 1
				return es
			},
			wantSeq: k, wantN: k,
		},
		{
			name: "edit a record and rechain the rest",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[k].Data = bytes.Replace(es[k].Data, []byte("allow"), []byte("deny"), 1)
				return rechain(es, k)
			},
			// Only the log's own head hash gives this away.
			wantSeq: n - 1, wantN: n,
		},
		{
			name:    "drop a record",
			tamper:  func(es []audit.Entry) []audit.Entry { return append(es[:k], es[k+1:]...) },
			wantSeq: k, wantN: k,
		},
		{
			name:    "drop a record and renumber",
			tamper:  func(es []audit.Entry) []audit.Entry { return renumber(append(es[:k], es[k+1:]...)) },
			wantSeq: k, wantN: k,
		},
		{
			name: "insert a record",
			tamper: func(es []audit.Entry) []audit.Entry {
				extra := audit.Entry{Data: forged, Hash: es[k].Hash}
				return renumber(append(es[:k], append([]audit.Entry{extra}, es[k:]...)...))
			},
			wantSeq: k, wantN: k,
		},
		{
			name: "insert a chained record",
			tamper: func(es []audit.Entry) []audit.Entry {
				extra := audit.Entry{Data: forged, Hash: entryHash(es[k-1].Hash, forged)}
				return renumber(append(es[:k], append([]audit.Entry{extra}, es[k:]...)...))
			},
			// The forged record fits the chain; the one after it does not.
			wantSeq: k + 1, wantN: k + 1,
		},
		{
			name: "insert a record and rechain the rest",
			tamper: func(es []audit.Entry) []audit.Entry {
				extra := audit.Entry{Data: forged}
				return rechain(renumber(append(es[:k], append([]audit.Entry{extra}, es[k:]...)...)), k)
			},
			wantSeq: n - 1, wantN: n,
		},
		{
			name: "duplicate a record under the next Seq",
			tamper: func(es []audit.Entry) []audit.Entry {
				return renumber(append(es[:k+1], append([]audit.Entry{es[k]}, es[k+1:]...)...))
			},
			wantSeq: k + 1, wantN: k + 1,
		},
		{
			name: "swap two records",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[k], es[k+1] = es[k+1], es[k]
				return renumber(es)
			},
			wantSeq: k, wantN: k,
		},
		{
			name: "swap two records keeping their Seq",
			tamper: func(es []audit.Entry) []audit.Entry {
				es[k], es[k+1] = es[k+1], es[k]
				return es
			},
			wantSeq: k, wantN: k,
		},
		{
			name:     "truncate",
			tamper:   func(es []audit.Entry) []audit.Entry { return es[:k] },
			truncate: true,
			wantSeq:  k, wantN: k,
		},
		{
			name:     "truncate the last record",
			tamper:   func(es []audit.Entry) []audit.Entry { return es[:n-1] },
			truncate: true,
			wantSeq:  n - 1, wantN: n - 1,
		},
		{
			name:     "truncate to nothing",
			tamper:   func(es []audit.Entry) []audit.Entry { return es[:0] },
			truncate: true,
			wantSeq:  0, wantN: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &tamperStore{Store: audit.NewMemoryStore()}
			l := newLog(t, s, audit.Options{Namespace: "app", Clock: tickClock(t0)})
			for i := range n {
				rec := audit.Record{Event: "tool.call", Agent: "agent-" + string(rune('0'+i)), Outcome: audit.OutcomeAllowed}
				if _, err := l.Log(t.Context(), rec); err != nil {
					t.Fatalf("Log: %v", err)
				}
			}
			if got, err := l.Verify(t.Context()); got != n || err != nil {
				t.Fatalf("Verify before tampering = %d, %v; want %d, nil", got, err, n)
			}

			var entries []audit.Entry
			err := s.Store.Scan(t.Context(), 0, n, func(e audit.Entry) error {
				e.Data = bytes.Clone(e.Data)
				entries = append(entries, e)
				return nil
			})
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			s.entries = tt.tamper(entries)
			if s.entries == nil {
				s.entries = []audit.Entry{}
			}
			s.size = uint64(len(s.entries))
			if !tt.truncate {
				s.size = n
			}

			got, err := l.Verify(t.Context())
			if !errors.Is(err, audit.ErrVerify) {
				t.Fatalf("Verify: got error %v, want %v", err, audit.ErrVerify)
			}
			var ve *audit.VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify: got error %T, want *audit.VerifyError", err)
			}
			if ve.Seq != tt.wantSeq {
				t.Errorf("Verify: error %q names record %d, want %d", err, ve.Seq, tt.wantSeq)
			}
			if got != tt.wantN {
				t.Errorf("Verify returned %d, want %d", got, tt.wantN)
			}
		})
	}
}

func TestVerifyEmpty(t *testing.T) {
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	if n, err := l.Verify(t.Context()); n != 0 || err != nil {
		t.Errorf("Verify of an empty log = %d, %v; want 0, nil", n, err)
	}
}

func TestVerifyStoreError(t *testing.T) {
	errRead := errors.New("read failed")
	s := &faultyStore{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{})
	if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
		t.Fatalf("Log: %v", err)
	}
	s.scanErr = errRead
	_, err := l.Verify(t.Context())
	if !errors.Is(err, errRead) {
		t.Errorf("Verify: got error %v, want %v", err, errRead)
	}
	// A store that can't be read is not evidence of tampering.
	if errors.Is(err, audit.ErrVerify) {
		t.Errorf("Verify: error %v matches %v, want it not to", err, audit.ErrVerify)
	}
}

func TestVerifyErrorMessage(t *testing.T) {
	err := error(&audit.VerifyError{Seq: 7, Reason: "stored hash does not match"})
	if got, want := err.Error(), "audit: record 7: stored hash does not match"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, audit.ErrVerify) {
		t.Errorf("errors.Is(%v, ErrVerify) = false, want true", err)
	}
	if errors.Is(err, audit.ErrUnavailable) {
		t.Errorf("errors.Is(%v, ErrUnavailable) = true, want false", err)
	}
}

func TestLogClose(t *testing.T) {
	s := &closeCounter{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{})
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s.closed != 1 {
		t.Errorf("Close closed the store %d times, want 1", s.closed)
	}
}

type closeCounter struct {
	audit.Store
	closed int
}

func (s *closeCounter) Close() error {
	s.closed++
	return s.Store.Close()
}
