package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// A Filter selects records. Empty fields match everything.
type Filter struct {
	// Since and Until bound the record time: Since <= Time < Until.
	// Times are compared as instants, whatever their location.
	Since, Until time.Time
	Namespace    string
	Agent        string
	Session      string
	Tool         string
	Event        string
	Outcome      Outcome
	// Limit is the most records one page holds: 0 means DefaultLimit,
	// and more than MaxLimit is an error.
	Limit int
	// Cursor continues a query from the Page.Next of an earlier page with
	// the same filter.
	Cursor string
}

// UntilMicro returns f.Until in Unix microseconds, rounded up: for a
// store that keeps record times in microseconds rounded down, every
// record before Until has a stored time below it. (A record just after
// Until, in the same microsecond, may have too; Query checks each
// record's own time.)
func (f Filter) UntilMicro() int64 {
	until := f.Until.UnixMicro()
	if f.Until.Nanosecond()%1000 != 0 {
		until++
	}
	return until
}

// Page limits.
const (
	DefaultLimit = 100
	MaxLimit     = 10_000
)

// A Page is one page of query results, in log order.
type Page struct {
	Records []Record
	// Next is the cursor of the following page, or "" if there is none.
	Next string
}

// ErrInvalidFilter is returned, wrapped, for a filter Query refuses.
var ErrInvalidFilter = errors.New("invalid audit filter")

// Query returns the records matching f, in log order, a page at a time.
func (l *Log) Query(ctx context.Context, f Filter) (Page, error) {
	return Query(ctx, l.store, f)
}

// errPageFull stops a scan once a page is full.
var errPageFull = errors.New("page full")

// Query returns the records of store matching f, in log order, a page at a
// time. A store that is a Querier finds candidates through its indexes;
// otherwise Query scans the log. Either way each record is decoded from
// its stored bytes and checked against f, so an index that disagrees with
// the bytes cannot make a record match.
func Query(ctx context.Context, store Store, f Filter) (Page, error) {
	limit, from, err := f.check()
	if err != nil {
		return Page{}, err
	}
	match := f.prefilter()
	var page Page
	visit := func(e Entry) error {
		if !match(e.Data) {
			return nil
		}
		r, err := DecodeRecord(e.Data)
		if err != nil {
			return fmt.Errorf("audit: record %d: %w", e.Seq, err)
		}
		r.Seq = e.Seq
		if !f.matches(&r) {
			return nil
		}
		// Only a record that matches in full starts a next page: the
		// prefilter passes records an attribute or the time range then
		// rule out, and a cursor to those would lead to an empty page.
		if len(page.Records) == limit {
			page.Next = strconv.FormatUint(e.Seq, 10)
			return errPageFull
		}
		page.Records = append(page.Records, r)
		return nil
	}
	if q, ok := store.(Querier); ok {
		err = q.QueryEntries(ctx, f, from, visit)
	} else {
		var size uint64
		if size, err = store.Size(ctx); err == nil {
			err = store.Scan(ctx, from, size, visit)
		}
	}
	if err != nil && err != errPageFull {
		return Page{}, err
	}
	return page, nil
}

// check validates f and returns its page size and starting position.
func (f *Filter) check() (limit int, from uint64, err error) {
	switch {
	case f.Limit < 0:
		return 0, 0, fmt.Errorf("audit: %w: negative limit %d", ErrInvalidFilter, f.Limit)
	case f.Limit > MaxLimit:
		return 0, 0, fmt.Errorf("audit: %w: limit %d is above %d", ErrInvalidFilter, f.Limit, MaxLimit)
	case f.Limit == 0:
		limit = DefaultLimit
	default:
		limit = f.Limit
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return 0, 0, fmt.Errorf("audit: %w: until %v is before since %v", ErrInvalidFilter, f.Until, f.Since)
	}
	switch f.Outcome {
	case "", OutcomeAllowed, OutcomeDenied:
	default:
		return 0, 0, fmt.Errorf("audit: %w: outcome %q is not %q or %q", ErrInvalidFilter, f.Outcome, OutcomeAllowed, OutcomeDenied)
	}
	if f.Cursor != "" {
		from, err = strconv.ParseUint(f.Cursor, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("audit: %w: malformed cursor %q", ErrInvalidFilter, f.Cursor)
		}
	}
	return limit, from, nil
}

// prefilter returns a cheap test on a record's bytes that every matching
// record passes, so most others are skipped without decoding.
func (f *Filter) prefilter() func([]byte) bool {
	var needles [][]byte
	for _, kv := range [...]struct{ key, v string }{
		{"agent", f.Agent}, {"session", f.Session}, {"tool", f.Tool},
		{"event", f.Event}, {"namespace", f.Namespace}, {"outcome", string(f.Outcome)},
	} {
		if kv.v != "" {
			n, _ := appendString([]byte(`"`+kv.key+`":`), kv.v)
			needles = append(needles, n)
		}
	}
	return func(data []byte) bool {
		for _, n := range needles {
			if !bytes.Contains(data, n) {
				return false
			}
		}
		return true
	}
}

// matches reports whether r passes every field of f.
func (f *Filter) matches(r *Record) bool {
	return (f.Since.IsZero() || !r.Time.Before(f.Since)) &&
		(f.Until.IsZero() || r.Time.Before(f.Until)) &&
		(f.Namespace == "" || r.Namespace == f.Namespace) &&
		(f.Agent == "" || r.Agent == f.Agent) &&
		(f.Session == "" || r.Session == f.Session) &&
		(f.Tool == "" || r.Tool == f.Tool) &&
		(f.Event == "" || r.Event == f.Event) &&
		(f.Outcome == "" || r.Outcome == f.Outcome)
}

// errStopEach ends QueryEach's read at its bound.
var errStopEach = errors.New("past the bound")

// QueryEach calls fn, in log order, with each record of store whose
// position is in [from, to) and that matches f — f's Limit and Cursor
// are not used — found through the store's indexes when it is a
// Querier. A stored entry that does not decode as a record is passed to
// bad, with why, and skipped, so that a reader of a log that others can
// write to goes past what they wrote; Query instead fails on it. fn's
// error stops the read and is returned.
func QueryEach(ctx context.Context, store Store, f Filter, from, to uint64, fn func(*Record) error, bad func(seq uint64, err error)) error {
	f.Limit, f.Cursor = 0, ""
	if _, _, err := f.check(); err != nil {
		return err
	}
	match := f.prefilter()
	visit := func(e Entry) error {
		if e.Seq >= to {
			return errStopEach
		}
		if !match(e.Data) {
			return nil
		}
		r, err := DecodeRecord(e.Data)
		if err != nil {
			bad(e.Seq, err)
			return nil
		}
		r.Seq = e.Seq
		if !f.matches(&r) {
			return nil
		}
		return fn(&r)
	}
	var err error
	if q, ok := store.(Querier); ok {
		err = q.QueryEntries(ctx, f, from, visit)
	} else {
		err = store.Scan(ctx, from, to, visit)
	}
	if err == errStopEach {
		return nil
	}
	return err
}
