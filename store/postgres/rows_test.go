package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec/audit"
)

// failedRows are the rows of a query whose connection was lost before
// they were described: no columns, no rows, and err.
type failedRows struct {
	pgx.Rows // any other method is not expected: it panics
	fields   []pgconn.FieldDescription
	err      error
	closed   bool
}

func (r *failedRows) Close()                                       { r.closed = true }
func (r *failedRows) Err() error                                   { return r.err }
func (r *failedRows) FieldDescriptions() []pgconn.FieldDescription { return r.fields }
func (r *failedRows) Next() bool                                   { return false }

// Rows that come without their columns — a query cut short by a lost
// connection, as in a database restart — are an unavailable store, not a
// panic (a replica crashed on them once, in
// TestReplicasSurviveKillAndDatabaseRestart).
func TestEachRowsWithoutColumns(t *testing.T) {
	lost := errors.New("read: connection reset by peer")
	for _, withHashes := range []bool{false, true} {
		rows := &failedRows{err: lost}
		err := each(rows, withHashes, func(audit.Entry) error { t.Fatal("a record from no rows"); return nil })
		if !errors.Is(err, lost) || !strings.Contains(err.Error(), "reading records") {
			t.Errorf("withHashes %t: each = %v, want the connection's error", withHashes, err)
		}
		if !rows.closed {
			t.Errorf("withHashes %t: the rows were not closed", withHashes)
		}
	}
	rows := &failedRows{fields: []pgconn.FieldDescription{{Name: "seq"}}}
	if err := each(rows, false, func(audit.Entry) error { return nil }); err == nil || !strings.Contains(err.Error(), "1 columns, want 2") {
		t.Errorf("rows of 1 column: each = %v", err)
	}
}

// hashRows are the rows of a query for tree hashes: (seq, hashes) pairs.
type hashRows struct {
	pgx.Rows // any other method is not expected: it panics
	seqs     []int64
	hashes   [][]byte
	next     int
}

func (r *hashRows) Close()     {}
func (r *hashRows) Err() error { return nil }
func (r *hashRows) Next() bool { r.next++; return r.next <= len(r.seqs) }
func (r *hashRows) Scan(dest ...any) error {
	*dest[0].(*int64), *dest[1].(*[]byte) = r.seqs[r.next-1], r.hashes[r.next-1]
	return nil
}

// hashQuerier answers every query with its rows.
type hashQuerier struct{ rows *hashRows }

func (q hashQuerier) Query(context.Context, string, ...any) (pgx.Rows, error) { return q.rows, nil }

// A records table that lost its primary key can return a record twice:
// that must not stand in for a record it lacks, whose hash would be read
// as zero.
func TestReadHashesRecordTwice(t *testing.T) {
	// Stored hash indexes 0 and 1: the leaves of records 0 and 1.
	raw := audit.PackHashes([]audit.Hash{{7}})
	for _, c := range []struct {
		name string
		seqs []int64
	}{
		{"twice, the other missing", []int64{0, 0}},
		{"one missing", []int64{0}},
		{"unasked", []int64{0, 1, 5}},
	} {
		rows := &hashRows{seqs: c.seqs, hashes: [][]byte{raw, raw, raw}[:len(c.seqs)]}
		got, err := readHashes(context.Background(), hashQuerier{rows}, []int64{tlog.StoredHashIndex(0, 0), tlog.StoredHashIndex(0, 1)})
		if err == nil {
			t.Errorf("%s: readHashes = %v, want an error", c.name, got)
		}
	}
	rows := &hashRows{seqs: []int64{1, 0}, hashes: [][]byte{raw, raw}}
	if got, err := readHashes(context.Background(), hashQuerier{rows}, []int64{tlog.StoredHashIndex(0, 0), tlog.StoredHashIndex(0, 1)}); err != nil || got[0] != (audit.Hash{7}) || got[1] != (audit.Hash{7}) {
		t.Errorf("both records, out of order: readHashes = %v, %v", got, err)
	}
}
