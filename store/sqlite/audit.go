package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/agentsec/agentsec/audit"
)

// Size implements audit.Store.
func (s *Store) Size(ctx context.Context) (uint64, error) {
	return s.size(ctx, s.reader)
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) size(ctx context.Context, q queryer) (uint64, error) {
	var size int64
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_records`).Scan(&size); err != nil {
		return 0, s.wrap("reading log size", err)
	}
	return uint64(size), nil
}

// Append implements audit.Store: the entries are committed in one
// transaction, on stable storage when Append returns nil.
func (s *Store) Append(ctx context.Context, entries []audit.Entry) error {
	if s.writer == nil {
		return errors.New("sqlite: the store is read-only")
	}
	if len(entries) == 0 {
		return nil
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	size := s.nextSeq
	if entries[0].Seq != size {
		return fmt.Errorf("sqlite: append of entry %d to a log of size %d", entries[0].Seq, size)
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return s.wrap("appending", err)
	}
	defer tx.Rollback()
	rows := make([]indexRow, 0, len(entries))
	args := make([]any, 0, 3*min(len(entries), rowsPerInsert))
	for i, e := range entries {
		if e.Seq != size+uint64(i) {
			return fmt.Errorf("sqlite: entry %d follows entry %d", e.Seq, size+uint64(i)-1)
		}
		row, err := rowOf(e)
		if err != nil {
			return err
		}
		rows = append(rows, row)
		args = append(args, int64(e.Seq), e.Data, audit.PackHashes(e.Hashes))
		if len(args) == cap(args) || i == len(entries)-1 {
			if _, err := tx.ExecContext(ctx, insertSQL("audit_records", 3, len(args)/3), args...); err != nil {
				return s.wrap(fmt.Sprintf("appending entries up to %d", e.Seq), err)
			}
			args = args[:0]
		}
	}
	// Index rows ride along once enough are waiting, so most appends
	// write only the records' page.
	flushed := len(s.pending)+len(rows) >= indexBatch
	if flushed {
		if err := s.writeIndex(ctx, tx, s.pending, rows); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		// The commit may have landed all the same; the next append
		// starts from what the database holds.
		if n, serr := s.size(ctx, s.writer); serr == nil {
			s.nextSeq = n
		}
		return s.wrap("committing append", err)
	}
	s.nextSeq = size + uint64(len(entries))
	if flushed {
		s.pending = s.pending[:0]
	} else {
		s.pending = append(s.pending, rows...)
	}
	return nil
}

// Scan implements audit.Store.
func (s *Store) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if to <= from {
		return nil
	}
	rows, err := s.reader.QueryContext(ctx,
		`SELECT seq, data, hashes FROM audit_records WHERE seq >= ? AND seq < ? ORDER BY seq`,
		clampSeq(from), clampSeq(to))
	if err != nil {
		return s.wrap("scanning", err)
	}
	return s.each(rows, true, fn)
}

// clampSeq keeps a sequence number within SQLite's signed integers.
func clampSeq(seq uint64) int64 { return int64(min(seq, 1<<63-1)) }

// each calls fn for each row of (seq, data[, hashes]) and closes rows.
func (s *Store) each(rows *sql.Rows, withHashes bool, fn func(audit.Entry) error) error {
	defer rows.Close()
	var (
		seq    int64
		data   sql.RawBytes
		raw    sql.RawBytes
		hashes [audit.MaxStoredHashes]audit.Hash
	)
	for rows.Next() {
		dest := []any{&seq, &data}
		if withHashes {
			dest = append(dest, &raw)
		}
		if err := rows.Scan(dest...); err != nil {
			return s.wrap("reading record", err)
		}
		e := audit.Entry{Seq: uint64(seq), Data: data}
		if withHashes {
			var err error
			if e.Hashes, err = audit.UnpackHashes(raw, &hashes); err != nil {
				return fmt.Errorf("sqlite: record %d: %w", seq, err)
			}
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("reading records", err)
	}
	return nil
}

// ReadHashes implements audit.Store. The hash with stored index i was
// stored by the last record of its subtree, at its level's offset in that
// record's hashes.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([]audit.Hash, error) {
	out := make([]audit.Hash, len(indexes))
	type slot struct{ i, level int }
	byRecord := map[int64][]slot{}
	for i, idx := range indexes {
		rec, level, err := audit.HashHolder(idx)
		if err != nil {
			return nil, fmt.Errorf("sqlite: %w", err)
		}
		byRecord[rec] = append(byRecord[rec], slot{i, level})
	}
	for rec, slots := range byRecord {
		var raw []byte
		err := s.reader.QueryRowContext(ctx, `SELECT hashes FROM audit_records WHERE seq = ?`, rec).Scan(&raw)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("sqlite: tree hash of record %d not stored", rec)
		}
		if err != nil {
			return nil, s.wrap("reading tree hashes", err)
		}
		for _, sl := range slots {
			h, ok := audit.HashAt(raw, sl.level)
			if !ok {
				return nil, fmt.Errorf("sqlite: record %d has no tree hash at level %d", rec, sl.level)
			}
			out[sl.i] = h
		}
	}
	return out, nil
}

// AddCheckpoint implements audit.Store.
func (s *Store) AddCheckpoint(ctx context.Context, size uint64, signed []byte) error {
	if s.writer == nil {
		return errors.New("sqlite: the store is read-only")
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return s.wrap("storing checkpoint", err)
	}
	defer tx.Rollback()
	var old []byte
	err = tx.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints WHERE size = ?`, clampSeq(size)).Scan(&old)
	switch {
	case err == nil && bytes.Equal(old, signed):
		return nil
	case err == nil:
		return fmt.Errorf("sqlite: a different checkpoint of size %d is stored", size)
	case !errors.Is(err, sql.ErrNoRows):
		return s.wrap("storing checkpoint", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (size, note) VALUES (?, ?)`, clampSeq(size), signed); err != nil {
		return s.wrap("storing checkpoint", err)
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("storing checkpoint", err)
	}
	return nil
}

// Checkpoints implements audit.Store.
func (s *Store) Checkpoints(ctx context.Context, fn func(uint64, []byte) error) error {
	rows, err := s.reader.QueryContext(ctx, `SELECT size, note FROM audit_checkpoints ORDER BY size`)
	if err != nil {
		return s.wrap("reading checkpoints", err)
	}
	defer rows.Close()
	for rows.Next() {
		var size int64
		var note []byte
		if err := rows.Scan(&size, &note); err != nil {
			return s.wrap("reading checkpoints", err)
		}
		if err := fn(uint64(size), note); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("reading checkpoints", err)
	}
	return nil
}

// LatestCheckpoint implements audit.Store.
func (s *Store) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	var size int64
	var note []byte
	err := s.reader.QueryRowContext(ctx, `SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1`).Scan(&size, &note)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, s.wrap("reading latest checkpoint", err)
	}
	return uint64(size), note, nil
}

// QueryEntries implements audit.Querier: it finds candidates through the
// index table, then passes every record the index does not cover yet.
func (s *Store) QueryEntries(ctx context.Context, f audit.Filter, from uint64, fn func(audit.Entry) error) error {
	var indexed int64
	if err := s.reader.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_index`).Scan(&indexed); err != nil {
		return s.wrap("querying", err)
	}
	where := []string{"i.seq >= ?", "i.seq < ?"}
	args := []any{clampSeq(from), indexed}
	for _, c := range []struct{ col, v string }{
		{"namespace", f.Namespace}, {"event", f.Event}, {"agent", f.Agent},
		{"session", f.Session}, {"tool", f.Tool}, {"outcome", string(f.Outcome)},
	} {
		if c.v != "" {
			where = append(where, "i."+c.col+" = ?")
			args = append(args, c.v)
		}
	}
	// The time column holds microseconds, rounded down; rounding the
	// bounds outwards keeps every record in range.
	if !f.Since.IsZero() {
		where = append(where, "i.time >= ?")
		args = append(args, f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		where = append(where, "i.time < ?")
		args = append(args, f.UntilMicro())
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT r.seq, r.data FROM audit_index i JOIN audit_records r ON r.seq = i.seq
		WHERE `+strings.Join(where, " AND ")+` ORDER BY i.seq`, args...)
	if err != nil {
		return s.wrap("querying", err)
	}
	if err := s.each(rows, false, fn); err != nil {
		return err
	}
	rows, err = s.reader.QueryContext(ctx, `SELECT seq, data FROM audit_records WHERE seq >= ? ORDER BY seq`,
		max(clampSeq(from), indexed))
	if err != nil {
		return s.wrap("querying", err)
	}
	return s.each(rows, false, fn)
}
