package sqlite

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/agentsec/agentsec/audit"
)

// The query index: each record's row in audit_index is written in the
// same transaction as the record, by the indexer (see tail.go). Index
// rows only find candidates: audit.Query checks every record it returns
// against its own bytes. A database written before the index rows went
// with their records may lack the rows of its last records; Open
// rebuilds them from the records' bytes.

// indexRow is one record's row in audit_index.
type indexRow struct {
	seq                                             int64
	time                                            int64
	namespace, event, agent, session, tool, outcome string
}

// rowOf returns the index row of e, decoding its bytes if the appender
// did not pass the record.
func rowOf(e audit.Entry) (indexRow, error) {
	rec, err := e.Decoded()
	if err != nil {
		return indexRow{}, fmt.Errorf("sqlite: %w", err)
	}
	return indexRow{seq: int64(e.Seq), time: rec.Time.UnixMicro(), namespace: rec.Namespace,
		event: rec.Event, agent: rec.Agent, session: rec.Session, tool: rec.Tool, outcome: string(rec.Outcome)}, nil
}

// writeIndex writes rows within tx, many to a statement.
func (s *Store) writeIndex(ctx context.Context, tx *writeTx, batches ...[]indexRow) error {
	args := make([]any, 0, 8*rowsPerInsert)
	flush := func() error {
		if len(args) == 0 {
			return nil
		}
		_, err := tx.ExecContext(ctx, "INSERT OR IGNORE"+insertSQL("audit_index", 8, len(args)/8)[len("INSERT"):], args...)
		args = args[:0]
		if err != nil {
			return s.wrap("indexing", err)
		}
		return nil
	}
	for _, rows := range batches {
		for _, r := range rows {
			args = append(args, r.seq, r.time, r.namespace, r.event, r.agent, r.session, r.tool, r.outcome)
			if len(args) == cap(args) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// rowsPerInsert bounds the rows of one multi-row INSERT, well within
// SQLite's limit on bound parameters.
const rowsPerInsert = 128

// insertSQL returns "INSERT INTO table VALUES (?,…),…" for rows rows of
// cols columns. The statements for the common sizes are kept.
func insertSQL(table string, cols, rows int) string {
	key := insertKey{table, cols, rows}
	if q, ok := insertCache.Load(key); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString("INSERT INTO " + table + " VALUES ")
	tuple := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(tuple)
	}
	q := b.String()
	insertCache.Store(key, q)
	return q
}

type insertKey struct {
	table      string
	cols, rows int
}

var insertCache sync.Map

// catchUpIndex indexes the records that have no index row, from their
// bytes.
func (s *Store) catchUpIndex(ctx context.Context) error {
	var indexed int64
	if err := s.writer.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_index`).Scan(&indexed); err != nil {
		return s.wrap("reading the index", err)
	}
	if uint64(indexed) >= s.nextSeq {
		return nil
	}
	var rows []indexRow
	err := s.Scan(ctx, uint64(indexed), s.nextSeq, func(e audit.Entry) error {
		r, err := rowOf(e)
		rows = append(rows, r)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: rebuilding the index: %w", err)
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return s.wrap("indexing", err)
	}
	defer tx.Rollback()
	if err := s.writeIndex(ctx, tx, rows); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("indexing", err)
	}
	return nil
}
