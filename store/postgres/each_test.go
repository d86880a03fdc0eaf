package postgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
