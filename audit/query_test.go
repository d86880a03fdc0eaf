package audit_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/google/go-cmp/cmp"
)

// queryStart is the time of the first record queryLog appends; each
// following record is one second later.
var queryStart = time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)

// at returns the time of record seq in queryLog.
func at(seq int) time.Time { return queryStart.Add(time.Duration(seq) * time.Second) }

// queryRecords are the records queryLog appends, in order.
var queryRecords = []audit.Record{
	0: {Event: "tool.call", Agent: "alice", Session: "s1", Tool: "search", Outcome: audit.OutcomeAllowed, Tokens: 10},
	1: {Event: "tool.call", Agent: "bob", Session: "s2", Tool: "search", Outcome: audit.OutcomeDenied},
	2: {Event: "trust.assign", Agent: "alice", Attrs: map[string]string{"level": "verified"}},
	3: {Event: "tool.call", Agent: "alice", Session: "s1", Tool: "refund", Outcome: audit.OutcomeDenied},
	4: {Event: "tool.call", Agent: "carol", Session: "s3", Tool: "search", Outcome: audit.OutcomeAllowed, Namespace: "other"},
	5: {Event: "tool.call", Agent: "alice", Session: "s4", Tool: "search", Outcome: audit.OutcomeAllowed, Tokens: 5},
	// Attributes that look like fields must not match a filter on them.
	6: {Event: "tool.call", Agent: "bob", Session: "s2", Tool: "fetch", Outcome: audit.OutcomeAllowed,
		Attrs: map[string]string{"agent": "alice", "session": "s1", "tool": "search", "event": "trust.assign", "namespace": "other", "outcome": "deny"}},
	7:  {Event: "tool.call", Agent: "alice", Session: "s1", Tool: "search", Outcome: audit.OutcomeAllowed, Namespace: "other"},
	8:  {Event: "trust.revoke", Agent: "bob"},
	9:  {Event: "tool.call", Agent: "alice", Session: "s1", Tool: "search", Outcome: audit.OutcomeDenied, Reason: `"agent":"alice"`},
	10: {Event: "tool.call", Agent: "alice ", Session: "s1", Tool: "search", Outcome: audit.OutcomeAllowed},
	11: {Event: "tool.call", Agent: "Alice", Session: "s1", Tool: "search", Outcome: audit.OutcomeAllowed},
}

// queryLog returns a log, in namespace "app", holding queryRecords.
func queryLog(t *testing.T) *audit.Log {
	t.Helper()
	return queryLogOver(t, audit.NewMemoryStore())
}

// queryLogOver is queryLog over the store s.
func queryLogOver(t *testing.T, s audit.Store) *audit.Log {
	t.Helper()
	l := newLog(t, s, audit.Options{Namespace: "app", Clock: tickClock(queryStart)})
	for _, rec := range queryRecords {
		if _, err := l.Log(t.Context(), rec); err != nil {
			t.Fatalf("Log(%+v): %v", rec, err)
		}
	}
	return l
}

// seqs returns the Seq of each record.
func seqs(recs []audit.Record) []uint64 {
	out := []uint64{}
	for _, r := range recs {
		out = append(out, r.Seq)
	}
	return out
}

// queryFilters are filters over queryLog and the Seqs they select.
var queryFilters = []struct {
	name   string
	filter audit.Filter
	want   []uint64
}{
	{"everything", audit.Filter{}, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
	{"agent", audit.Filter{Agent: "alice"}, []uint64{0, 2, 3, 5, 7, 9}},
	{"agent nobody has", audit.Filter{Agent: "dave"}, []uint64{}},
	{"session", audit.Filter{Session: "s1"}, []uint64{0, 3, 7, 9, 10, 11}},
	{"tool", audit.Filter{Tool: "search"}, []uint64{0, 1, 4, 5, 7, 9, 10, 11}},
	{"event", audit.Filter{Event: "trust.assign"}, []uint64{2}},
	{"namespace", audit.Filter{Namespace: "other"}, []uint64{4, 7}},
	{"default namespace", audit.Filter{Namespace: "app"}, []uint64{0, 1, 2, 3, 5, 6, 8, 9, 10, 11}},
	{"allowed", audit.Filter{Outcome: audit.OutcomeAllowed}, []uint64{0, 4, 5, 6, 7, 10, 11}},
	{"denied", audit.Filter{Outcome: audit.OutcomeDenied}, []uint64{1, 3, 9}},
	{"agent and outcome", audit.Filter{Agent: "alice", Outcome: audit.OutcomeDenied}, []uint64{3, 9}},
	{"agent, session, tool and event", audit.Filter{Agent: "alice", Session: "s1", Tool: "search", Event: "tool.call"}, []uint64{0, 7, 9}},
	{"agent and namespace", audit.Filter{Agent: "alice", Namespace: "other"}, []uint64{7}},
	{"nothing matches all", audit.Filter{Agent: "bob", Tool: "refund"}, []uint64{}},
	{"since", audit.Filter{Since: at(9)}, []uint64{9, 10, 11}},
	{"until", audit.Filter{Until: at(3)}, []uint64{0, 1, 2}},
	{"since and until", audit.Filter{Since: at(3), Until: at(6)}, []uint64{3, 4, 5}},
	{"since equals until", audit.Filter{Since: at(3), Until: at(3)}, []uint64{}},
	{"since a nanosecond after a record", audit.Filter{Since: at(3).Add(1)}, []uint64{4, 5, 6, 7, 8, 9, 10, 11}},
	{"until a nanosecond after a record", audit.Filter{Until: at(3).Add(1)}, []uint64{0, 1, 2, 3}},
	{
		// The same instants, in locations whose wall clocks read hours
		// away from UTC.
		"since and until in other locations",
		audit.Filter{Since: at(3).In(time.FixedZone("east", 9*3600)), Until: at(6).In(time.FixedZone("west", -7*3600))},
		[]uint64{3, 4, 5},
	},
	{"since in Local", audit.Filter{Since: at(10).Local()}, []uint64{10, 11}},
	{"before every record", audit.Filter{Until: at(0)}, []uint64{}},
	{"after every record", audit.Filter{Since: at(12)}, []uint64{}},
	{"time and agent", audit.Filter{Agent: "alice", Since: at(3), Until: at(9)}, []uint64{3, 5, 7}},
	{"time and outcome", audit.Filter{Outcome: audit.OutcomeAllowed, Until: at(5)}, []uint64{0, 4}},
	// Record 6 carries these values as attributes only; record 9 has a
	// reason that looks like a field.
	{"agent in attrs only", audit.Filter{Agent: "alice", Tool: "fetch"}, []uint64{}},
	{"session in attrs only", audit.Filter{Session: "s1", Agent: "bob"}, []uint64{}},
	{"event in attrs only", audit.Filter{Event: "trust.assign", Agent: "bob"}, []uint64{}},
	{"namespace in attrs only", audit.Filter{Namespace: "other", Agent: "bob"}, []uint64{}},
	{"outcome in attrs only", audit.Filter{Outcome: audit.OutcomeDenied, Agent: "bob", Tool: "fetch"}, []uint64{}},
	{"agent with a space", audit.Filter{Agent: "alice "}, []uint64{10}},
	{"agent in other case", audit.Filter{Agent: "Alice"}, []uint64{11}},
}

func TestQuery(t *testing.T) {
	l := queryLog(t)
	for _, tt := range queryFilters {
		t.Run(tt.name, func(t *testing.T) {
			page, err := l.Query(t.Context(), tt.filter)
			if err != nil {
				t.Fatalf("Query: %v", err)
			}
			if diff := cmp.Diff(tt.want, seqs(page.Records)); diff != "" {
				t.Errorf("Query: Seqs mismatch (-want +got):\n%s", diff)
			}
			if page.Next != "" {
				t.Errorf("Query: got Next %q, want empty", page.Next)
			}
		})
	}
}

func TestQueryReturnsRecords(t *testing.T) {
	l := queryLog(t)
	page, err := l.Query(t.Context(), audit.Filter{Agent: "bob", Tool: "fetch"})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	want := queryRecords[6]
	want.Seq, want.Time, want.Namespace = 6, at(6), "app"
	if diff := cmp.Diff([]audit.Record{want}, page.Records); diff != "" {
		t.Errorf("Query mismatch (-want +got):\n%s", diff)
	}
}

// queryAll follows Next from the first page to the last and returns every
// record, failing the test if a page breaks the paging rules.
func queryAll(t *testing.T, l *audit.Log, f audit.Filter) []audit.Record {
	t.Helper()
	limit := f.Limit
	if limit == 0 {
		limit = audit.DefaultLimit
	}
	var all []audit.Record
	for pages := 1; ; pages++ {
		page, err := l.Query(t.Context(), f)
		if err != nil {
			t.Fatalf("Query(page %d, cursor %q): %v", pages, f.Cursor, err)
		}
		if len(page.Records) > limit {
			t.Errorf("page %d: got %d records, want at most %d", pages, len(page.Records), limit)
		}
		if len(page.Records) == 0 && pages > 1 {
			t.Errorf("page %d: got no records after a page with Next %q", pages, f.Cursor)
		}
		if page.Next != "" && len(page.Records) < limit {
			t.Errorf("page %d: got Next %q after only %d records, want a full page of %d", pages, page.Next, len(page.Records), limit)
		}
		all = append(all, page.Records...)
		if page.Next == "" {
			return all
		}
		if pages > 100 {
			t.Fatalf("paging did not end after %d pages", pages)
		}
		f.Cursor = page.Next
	}
}

func TestQueryPaging(t *testing.T) {
	l := queryLog(t)
	for _, tt := range queryFilters {
		limits := []int{1, 2, 3, 5, audit.MaxLimit}
		if n := len(tt.want); n > 0 && !slices.Contains(limits, n) {
			limits = append(limits, n) // a last page that is exactly full
		}
		for _, limit := range limits {
			t.Run(fmt.Sprintf("%s/limit %d", tt.name, limit), func(t *testing.T) {
				f := tt.filter
				f.Limit = limit
				got := queryAll(t, l, f)
				if diff := cmp.Diff(tt.want, seqs(got)); diff != "" {
					t.Errorf("records over all pages: Seqs mismatch (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestQueryDefaultLimit(t *testing.T) {
	const n = audit.DefaultLimit*2 + 7
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	for i := range n {
		if _, err := l.Log(t.Context(), audit.Record{Event: "e", Tokens: int64(i + 1)}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	page, err := l.Query(t.Context(), audit.Filter{})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(page.Records) != audit.DefaultLimit || page.Next == "" {
		t.Errorf("Query with Limit 0: got %d records and Next %q, want %d and a cursor", len(page.Records), page.Next, audit.DefaultLimit)
	}
	got := seqs(queryAll(t, l, audit.Filter{}))
	want := make([]uint64, n)
	for i := range want {
		want[i] = uint64(i)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records over all pages: Seqs mismatch (-want +got):\n%s", diff)
	}
}

func TestQueryEmptyLog(t *testing.T) {
	l := newLog(t, audit.NewMemoryStore(), audit.Options{})
	page, err := l.Query(t.Context(), audit.Filter{})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(page.Records) != 0 || page.Next != "" {
		t.Errorf("Query of an empty log = %+v, want no records and no Next", page)
	}
}

func TestQueryCursorPastEnd(t *testing.T) {
	l := queryLog(t)
	for _, cursor := range []string{"12", "1000", "18446744073709551615"} {
		page, err := l.Query(t.Context(), audit.Filter{Cursor: cursor})
		if err != nil {
			t.Errorf("Query(cursor %q): %v", cursor, err)
			continue
		}
		if len(page.Records) != 0 || page.Next != "" {
			t.Errorf("Query(cursor %q) = %+v, want no records and no Next", cursor, page)
		}
	}
}

func TestQuerySeesNewRecords(t *testing.T) {
	l := queryLog(t)
	page, err := l.Query(t.Context(), audit.Filter{Agent: "alice", Limit: 6})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if page.Next != "" {
		t.Fatalf("Query: got Next %q, want empty", page.Next)
	}
	rec, err := l.Log(t.Context(), audit.Record{Event: "tool.call", Agent: "alice"})
	if err != nil {
		t.Fatalf("Log: %v", err)
	}
	page, err = l.Query(t.Context(), audit.Filter{Agent: "alice", Cursor: fmt.Sprint(rec.Seq)})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if got := seqs(page.Records); !slices.Equal(got, []uint64{rec.Seq}) {
		t.Errorf("Query from the new record: got Seqs %v, want [%d]", got, rec.Seq)
	}
}

func TestQueryInvalidFilter(t *testing.T) {
	l := queryLog(t)
	tests := []struct {
		name   string
		filter audit.Filter
	}{
		{"negative limit", audit.Filter{Limit: -1}},
		{"limit above MaxLimit", audit.Filter{Limit: audit.MaxLimit + 1}},
		{"until before since", audit.Filter{Since: at(5), Until: at(4)}},
		{"until a nanosecond before since", audit.Filter{Since: at(5), Until: at(5).Add(-1)}},
		{"until before since in other locations", audit.Filter{
			Since: at(5).In(time.FixedZone("west", -10*3600)),
			Until: at(4).In(time.FixedZone("east", 10*3600)),
		}},
		{"unknown outcome", audit.Filter{Outcome: "maybe"}},
		{"outcome in other case", audit.Filter{Outcome: "Deny"}},
		{"cursor not a number", audit.Filter{Cursor: "abc"}},
		{"negative cursor", audit.Filter{Cursor: "-1"}},
		{"fractional cursor", audit.Filter{Cursor: "1.5"}},
		{"cursor with a space", audit.Filter{Cursor: " 1"}},
		{"cursor with a sign", audit.Filter{Cursor: "+1"}},
		{"cursor too large", audit.Filter{Cursor: "18446744073709551616"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, err := l.Query(t.Context(), tt.filter)
			if !errors.Is(err, audit.ErrInvalidFilter) {
				t.Errorf("Query: got error %v, want %v", err, audit.ErrInvalidFilter)
			}
			if len(page.Records) != 0 || page.Next != "" {
				t.Errorf("Query returned %+v with its error, want an empty page", page)
			}
		})
	}
}

// scanQuerier is a Querier whose "index" is a scan: it passes every entry
// from the cursor on, matching or not, without hashes, as the Querier
// interface allows. Query must still return exactly the matches.
type scanQuerier struct {
	*audit.MemoryStore
	calls atomic.Int64
}

var _ audit.Querier = (*scanQuerier)(nil)

func (s *scanQuerier) QueryEntries(ctx context.Context, _ audit.Filter, from uint64, fn func(audit.Entry) error) error {
	s.calls.Add(1)
	return s.MemoryStore.Scan(ctx, from, math.MaxUint64, func(e audit.Entry) error {
		e.Hashes = nil
		return fn(e)
	})
}

func TestQueryThroughQuerier(t *testing.T) {
	s := &scanQuerier{MemoryStore: audit.NewMemoryStore()}
	l := queryLogOver(t, s)
	for _, tt := range queryFilters {
		for _, limit := range []int{1, 3, audit.MaxLimit} {
			t.Run(fmt.Sprintf("%s/limit %d", tt.name, limit), func(t *testing.T) {
				f := tt.filter
				f.Limit = limit
				before := s.calls.Load()
				got := queryAll(t, l, f)
				if diff := cmp.Diff(tt.want, seqs(got)); diff != "" {
					t.Errorf("records over all pages: Seqs mismatch (-want +got):\n%s", diff)
				}
				if s.calls.Load() == before {
					t.Errorf("Query did not ask the store's QueryEntries")
				}
			})
		}
	}
}

// The conformance suite's Query check runs against a Querier.
func TestQuerierStore(t *testing.T) {
	audittest.Run(t, func(t *testing.T) audit.Store {
		return &scanQuerier{MemoryStore: audit.NewMemoryStore()}
	})
}

// QueryEach reads past an entry that does not decode, naming it, where
// Query stops; and it keeps to its bounds.
func TestQueryEachSkipsUndecodable(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	l, err := audit.NewLog(ctx, store, audit.Options{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := l.Log(ctx, audit.Record{Event: "e", Agent: fmt.Sprint("a", i)}); err != nil {
			t.Fatal(err)
		}
	}
	bad := undecodable{Store: store, seq: 2}
	if _, err := audit.Query(ctx, bad, audit.Filter{Event: "e"}); err == nil {
		t.Fatal("Query read past an undecodable record")
	}
	var got []string
	var skipped []uint64
	err = audit.QueryEach(ctx, bad, audit.Filter{Event: "e"}, 1, 4, func(r *audit.Record) error {
		got = append(got, r.Agent)
		return nil
	}, func(seq uint64, err error) { skipped = append(skipped, seq) })
	if err != nil || strings.Join(got, ",") != "a1,a3" || len(skipped) != 1 || skipped[0] != 2 {
		t.Errorf("QueryEach: %v, skipped %v (%v)", got, skipped, err)
	}
}

// undecodable serves the entry at seq with bytes that are not a record.
type undecodable struct {
	audit.Store
	seq uint64
}

func (s undecodable) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	return s.Store.Scan(ctx, from, to, func(e audit.Entry) error {
		if e.Seq == s.seq {
			e.Data = []byte(`{"event":"e","agent":"x",}`)
		}
		return fn(e)
	})
}
