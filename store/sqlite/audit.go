package sqlite

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// Size implements audit.Store.
func (s *Store) Size(ctx context.Context) (uint64, error) {
	if s.tail != nil {
		v := s.tail.view()
		return v.base + uint64(len(v.entries)), nil
	}
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

// Append implements audit.Store: the entries are on stable storage, in
// the record log, when Append returns nil. The database gets them a
// moment later, from the tail (see tail.go); until then reads find them
// in the tail.
func (s *Store) Append(ctx context.Context, entries []audit.Entry) error {
	if s.writer == nil {
		return errors.New("sqlite: the store is read-only")
	}
	if len(entries) == 0 {
		return nil
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	size := s.nextSeq
	for i, e := range entries {
		if e.Seq != size+uint64(i) {
			return fmt.Errorf("sqlite: append of entry %d to a log of size %d", e.Seq, size+uint64(i))
		}
		if len(e.Data) == 0 || len(e.Data) > audit.MaxRecordSize || len(e.Hashes) == 0 || len(e.Hashes) > audit.MaxStoredHashes {
			return fmt.Errorf("sqlite: entry %d has %d bytes and %d tree hashes", e.Seq, len(e.Data), len(e.Hashes))
		}
	}
	if err := s.indexErr.Load(); err != nil {
		return *err
	}
	// An audit.Log appends at most audit.MaxBatch records at once; a
	// larger batch, from another caller, is written in pieces of that
	// many, so that no segment grows past maxSegmentBytes.
	for piece := range slices.Chunk(entries, audit.MaxBatch) {
		if err := s.rlog.append(func(dst []byte, prev uint32) ([]byte, uint32, int64) {
			for _, e := range piece {
				dst, prev = appendFrame(dst, prev, frame{kind: frameRecord, seq: e.Seq, data: e.Data, hashes: audit.PackHashes(e.Hashes)})
			}
			return dst, prev, int64(piece[len(piece)-1].Seq)
		}); err != nil {
			return err
		}
	}
	s.tail.push(entries)
	s.nextSeq = size + uint64(len(entries))
	return nil
}

// insertRecords inserts entries, which must follow size, within tx, and
// returns their index rows.
func (s *Store) insertRecords(ctx context.Context, tx *writeTx, entries []audit.Entry, size uint64) ([]indexRow, error) {
	rows := make([]indexRow, 0, len(entries))
	args := make([]any, 0, 3*min(len(entries), rowsPerInsert))
	for i, e := range entries {
		if e.Seq != size+uint64(i) {
			return nil, fmt.Errorf("sqlite: entry %d follows entry %d", e.Seq, size+uint64(i)-1)
		}
		row, err := rowOf(e)
		if err != nil {
			return nil, err
		}
		rows = append(rows, row)
		args = append(args, int64(e.Seq), e.Data, audit.PackHashes(e.Hashes))
		if len(args) == cap(args) || i == len(entries)-1 {
			if _, err := tx.ExecContext(ctx, insertSQL("audit_records", 3, len(args)/3), args...); err != nil {
				return nil, s.wrap(fmt.Sprintf("appending entries up to %d", e.Seq), err)
			}
			args = args[:0]
		}
	}
	return rows, nil
}

// Scan implements audit.Store.
func (s *Store) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if to <= from {
		return nil
	}
	// The view first: what it lacks was in the database before it.
	v := s.view()
	if from < v.base {
		rows, err := s.reader.QueryContext(ctx,
			`SELECT seq, data, hashes FROM audit_records WHERE seq >= ? AND seq < ? ORDER BY seq`,
			clampSeq(from), clampSeq(min(to, v.base)))
		if err != nil {
			return s.wrap("scanning", err)
		}
		if err := s.each(rows, true, fn); err != nil {
			return err
		}
	}
	return v.each(ctx, from, to, fn)
}

// view returns the tail's view; a read-only Store has no tail.
func (s *Store) view() tailView {
	if s.tail == nil {
		return tailView{base: math.MaxUint64}
	}
	return s.tail.view()
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
	v := s.view()
	for rec, slots := range byRecord {
		if e, ok := v.entry(uint64(rec)); ok {
			for _, sl := range slots {
				if sl.level >= len(e.Hashes) {
					return nil, fmt.Errorf("sqlite: record %d has no tree hash at level %d", rec, sl.level)
				}
				out[sl.i] = e.Hashes[sl.level]
			}
			continue
		}
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

// AddCheckpoint implements audit.Store. Like a record, a checkpoint is
// durable in the record log when AddCheckpoint returns nil.
func (s *Store) AddCheckpoint(ctx context.Context, size uint64, signed []byte) error {
	if s.writer == nil {
		return errors.New("sqlite: the store is read-only")
	}
	if len(signed) == 0 || len(signed) > maxNote {
		return fmt.Errorf("sqlite: a checkpoint note of %d bytes (at most %d)", len(signed), maxNote)
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	if err := s.indexErr.Load(); err != nil {
		return *err
	}
	old, err := s.checkpointOfSize(ctx, size)
	switch {
	case err != nil:
		return err
	case old != nil && bytes.Equal(old, signed):
		return nil
	case old != nil:
		return fmt.Errorf("sqlite: a different checkpoint of size %d is stored", size)
	}
	if err := s.rlog.append(func(dst []byte, prev uint32) ([]byte, uint32, int64) {
		dst, prev = appendFrame(dst, prev, frame{kind: frameCheckpoint, seq: size, data: signed})
		// The segment may be reused once the next record is durable in
		// the database: the indexer commits the checkpoint with it, or
		// before.
		return dst, prev, int64(s.nextSeq)
	}); err != nil {
		return err
	}
	s.tail.pushCheckpoint(size, signed)
	return nil
}

// checkpointOfSize returns the stored checkpoint of size, or nil.
func (s *Store) checkpointOfSize(ctx context.Context, size uint64) ([]byte, error) {
	v := s.tail.view()
	if note, ok := v.checkpoint(size); ok {
		return note, nil
	}
	var note []byte
	err := s.reader.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints WHERE size = ?`, clampSeq(size)).Scan(&note)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, s.wrap("reading checkpoint", err)
	}
	return note, nil
}

// insertCheckpoint stores a checkpoint within tx unless the same one is
// stored; it reports whether it inserted it.
func insertCheckpoint(ctx context.Context, tx *writeTx, size uint64, signed []byte) (bool, error) {
	var old []byte
	err := tx.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints WHERE size = ?`, clampSeq(size)).Scan(&old)
	switch {
	case err == nil && bytes.Equal(old, signed):
		return false, nil
	case err == nil:
		return false, fmt.Errorf("sqlite: a different checkpoint of size %d is stored", size)
	case !errors.Is(err, sql.ErrNoRows):
		return false, fmt.Errorf("sqlite: storing checkpoint: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (size, note) VALUES (?, ?)`, clampSeq(size), signed); err != nil {
		return false, fmt.Errorf("sqlite: storing checkpoint: %w", err)
	}
	return true, nil
}

// Checkpoints implements audit.Store.
func (s *Store) Checkpoints(ctx context.Context, fn func(uint64, []byte) error) error {
	// The tail's checkpoints, by size, are merged into the database's;
	// one the indexer committed since the view is passed once.
	pending := slices.SortedFunc(slices.Values(s.view().checkpoints), func(a, b checkpointFrame) int { return cmp.Compare(a.size, b.size) })
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
		for len(pending) > 0 && pending[0].size <= uint64(size) {
			if pending[0].size < uint64(size) {
				if err := fn(pending[0].size, pending[0].note); err != nil {
					return err
				}
			}
			pending = pending[1:]
		}
		if err := fn(uint64(size), note); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("reading checkpoints", err)
	}
	for _, c := range pending {
		if err := fn(c.size, c.note); err != nil {
			return err
		}
	}
	return nil
}

// LatestCheckpoint implements audit.Store.
func (s *Store) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	var latest *checkpointFrame
	for _, c := range s.view().checkpoints {
		if latest == nil || c.size > latest.size {
			latest = &c
		}
	}
	var size int64
	var note []byte
	err := s.reader.QueryRowContext(ctx, `SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1`).Scan(&size, &note)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		size = -1
	case err != nil:
		return 0, nil, s.wrap("reading latest checkpoint", err)
	}
	if latest != nil && int64(latest.size) > size {
		return latest.size, latest.note, nil
	}
	if size < 0 {
		return 0, nil, nil
	}
	return uint64(size), note, nil
}

// QueryEntries implements audit.Querier: it finds candidates through the
// index table, then passes every record the index does not cover yet.
func (s *Store) QueryEntries(ctx context.Context, f audit.Filter, from uint64, fn func(audit.Entry) error) error {
	v := s.view()
	var indexed int64
	if err := s.reader.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_index`).Scan(&indexed); err != nil {
		return s.wrap("querying", err)
	}
	indexed = min(indexed, clampSeq(v.base))
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
	rows, err = s.reader.QueryContext(ctx, `SELECT seq, data FROM audit_records WHERE seq >= ? AND seq < ? ORDER BY seq`,
		max(clampSeq(from), indexed), clampSeq(v.base))
	if err != nil {
		return s.wrap("querying", err)
	}
	if err := s.each(rows, false, fn); err != nil {
		return err
	}
	return v.each(ctx, from, math.MaxUint64, fn)
}

// A busy audit.Log waits for records to gather before it appends a batch
// (GatherAppends) gatherSyncs times as long as a sync of the record log
// takes, so that syncs keep the disk busy for at most a ninth of the
// time, and at most gatherMax: a disk whose sync is slow, or a sync
// slowed by the load, should not hold the callers for long. Where a sync
// takes less than gatherMin/gatherSyncs — tmpfs, a disk whose cache
// survives a power loss — the log does not wait: gathering there would
// cost the callers more than the syncs it saves.
const (
	gatherSyncs = 8
	gatherMax   = 2 * time.Millisecond
	gatherMin   = 100 * time.Microsecond
)

// GatherAppends implements audit.GatheringStore: each append is a sync
// of the record log, and on a busy log fewer, larger batches serve the
// same callers with fewer syncs. With 64 callers on this 2-core machine,
// where a sync takes 0.2–0.5 ms and the wait is gatherMax
// (bench/gateway), a batch held about 6 records without gathering, and
// 12 to 16 with it; a call there takes about 27 ms.
func (s *Store) GatherAppends() time.Duration {
	if s.rlog == nil {
		return 0 // read-only: its appends fail at once
	}
	return gatherWait(time.Duration(s.rlog.syncTook.Load()))
}

// gatherWait is how long a busy log waits for records to gather when a
// sync takes sync.
func gatherWait(sync time.Duration) time.Duration {
	wait := gatherSyncs * sync
	if wait < gatherMin {
		return 0
	}
	return min(wait, gatherMax)
}

// movingAverage adds a measure taken to an exponentially weighted moving
// average of measures, avg, in which the last 8 or so weigh most; the
// first measure, with avg 0, is the average.
func movingAverage(avg, taken time.Duration) time.Duration {
	if avg <= 0 {
		return taken
	}
	return avg + (taken-avg)/8
}
