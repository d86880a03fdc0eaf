package postgres

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsec/agentsec/audit"
)

// AuditStore is an audit.SharedStore and audit.Querier in PostgreSQL.
// Every append, through Append or AppendShared, goes in under the lock
// of the log's head row and advances the head in the same transaction,
// so two appenders can never both extend the log from the same size.
type AuditStore struct {
	ref

	mu   sync.Mutex
	next *ride // boarded by AppendComing for the next append
}

var (
	_ audit.SharedStore = (*AuditStore)(nil)
	_ audit.Querier     = (*AuditStore)(nil)
)

// Size implements audit.Store.
func (s *AuditStore) Size(ctx context.Context) (uint64, error) {
	var size int64
	if err := s.db.pool.QueryRow(ctx, `SELECT size FROM agentsec_audit_head`).Scan(&size); err != nil {
		return 0, unavailable("reading the log's size", err)
	}
	return uint64(size), nil
}

// Append implements audit.Store: an AppendShared of entries, which must
// continue the log from its size. The entries are committed together, on
// the server's stable storage when Append returns nil (the store's
// connections commit with synchronous_commit on, whatever the database's
// default).
func (s *AuditStore) Append(ctx context.Context, entries []audit.Entry) error {
	return s.AppendShared(ctx, func(size uint64, _ audit.HashReader) ([]audit.Entry, error) {
		return entries, nil
	})
}

func appending(entries []audit.Entry) string {
	return fmt.Sprintf("appending entries %d to %d", entries[0].Seq, entries[len(entries)-1].Seq)
}

// AppendShared implements audit.SharedStore. The head's row lock is the
// append lock: one transaction reads the head FOR UPDATE, build computes
// the batch's tree hashes from what is stored, and the batch is copied in
// and committed before the lock is released, with the budget
// reservations that ride it (riders.go). The lock is held for three
// round trips (BEGIN and the lock in one, the COPY, the riders, the
// head's update and COMMIT in one), and a fourth to read the tree's head
// when another replica appended since this one last did.
//
// An append gives up after appendTimeout: the log's callers don't cancel
// appends, which others' records may be waiting on, and a database that
// doesn't answer must fail the calls, not hold them.
func (s *AuditStore) AppendShared(ctx context.Context, build func(uint64, audit.HashReader) ([]audit.Entry, error)) error {
	ctx, cancel := context.WithTimeout(ctx, appendTimeout)
	defer cancel()
	// The append will commit soon: reservations made meanwhile wait to
	// ride with it (riders.go), as they have since AppendComing if it
	// was told of it.
	ride := s.boarded()
	defer ride.alight()
	conn, err := s.db.pool.Acquire(ctx)
	if err != nil {
		return unavailable("appending", err)
	}
	// A connection left in a transaction by a failure below is closed,
	// not reused, when released.
	defer conn.Release()
	lock := &pgx.Batch{}
	lock.Queue(`BEGIN`)
	lock.Queue(`SELECT size FROM agentsec_audit_head FOR UPDATE`)
	var size int64
	br := conn.SendBatch(ctx, lock)
	_, err = br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&size)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return unavailable("locking the log's head", err)
	}
	// Unless it commits, the transaction is rolled back before the
	// connection goes back to the pool: the head is free at once, and the
	// connection is used again rather than closed. A server that does not
	// answer the rollback within batchTimeout loses the connection
	// instead (pgx closes it, and the server ends the transaction when it
	// notices): the append must not hang on it.
	committed := false
	defer func() {
		if !committed {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchTimeout)
			defer cancel()
			_, _ = conn.Exec(rctx, `ROLLBACK`)
		}
	}()

	entries, err := build(uint64(size), func(indexes []int64) ([]audit.Hash, error) {
		return readHashes(ctx, conn, indexes)
	})
	switch {
	case err != nil:
		return err
	case len(entries) == 0:
		return nil
	case entries[0].Seq != uint64(size):
		return fmt.Errorf("postgres: append of entry %d to a log of size %d", entries[0].Seq, size)
	}
	rows, err := copyRows(entries)
	if err != nil {
		return err
	}
	// The head is held, so the records can't collide with another
	// appender's. A large batch goes in by COPY, the cheapest way in for
	// many rows but a round trip of its own; a small one by an INSERT in
	// the round trip that commits.
	var insert [][]any
	if len(rows) <= maxInsertRows {
		insert = rows
	} else {
		var n int64
		n, err = conn.CopyFrom(ctx, pgx.Identifier{"agentsec_audit_records"}, recordColumns, pgx.CopyFromRows(rows))
		if err == nil && n != int64(len(entries)) {
			err = fmt.Errorf("copied %d of %d records", n, len(entries))
		}
	}
	if err == nil {
		var rode []reserved
		var rideErr error
		rode, rideErr, err = s.insertAndCommit(ctx, conn, insert, size+int64(len(entries)), ride.take())
		ride.deliver(rode, cmp.Or(err, rideErr))
	}
	if err != nil {
		return unavailable(appending(entries), err)
	}
	committed = true
	return nil
}

// maxInsertRows is the largest batch inserted by INSERT rather than COPY.
const maxInsertRows = 8

// insertSQL[n] inserts n records, in recordColumns' order.
var insertSQL = func() (out [maxInsertRows + 1]string) {
	for n := 1; n <= maxInsertRows; n++ {
		var sql strings.Builder
		sql.WriteString(`INSERT INTO agentsec_audit_records (` + strings.Join(recordColumns, ", ") + `) VALUES `)
		for i := range n {
			if i > 0 {
				sql.WriteString(", ")
			}
			sql.WriteByte('(')
			for j := range recordColumns {
				if j > 0 {
					sql.WriteString(", ")
				}
				fmt.Fprintf(&sql, "$%d", i*len(recordColumns)+j+1)
			}
			sql.WriteByte(')')
		}
		out[n] = sql.String()
	}
	return out
}()

// insertAndCommit inserts rows (in recordColumns' order; none if nil),
// moves the log's head to size and commits, in one round trip, with the
// reservations of riders, if any, first. A transaction that ends in
// anything but COMMIT is a failure (readCommit). It returns the riders'
// answers, and rideErr if their statement failed: it is then rolled back
// to the savepoint before it, and the records go in without them, in a
// second round trip.
func (s *AuditStore) insertAndCommit(ctx context.Context, conn *pgxpool.Conn, rows [][]any, size int64, riders []string) (rode []reserved, rideErr, err error) {
	b := &pgx.Batch{}
	if len(riders) > 0 {
		s.db.queueRiders(b, riders)
	}
	if len(rows) > 0 {
		args := make([]any, 0, len(rows)*len(recordColumns))
		for _, row := range rows {
			args = append(args, row...)
		}
		b.Queue(insertSQL[len(rows)], args...)
	}
	b.Queue(`UPDATE agentsec_audit_head SET size = $1`, size)
	b.Queue(`COMMIT`)
	br := conn.SendBatch(ctx, b)
	if len(riders) > 0 {
		if rode, rideErr = readRiders(br, riders); rideErr != nil {
			// The statements after theirs failed with them.
			_ = br.Close()
			if _, err := conn.Exec(ctx, `ROLLBACK TO SAVEPOINT riders`); err != nil {
				return nil, rideErr, err
			}
			_, _, err = s.insertAndCommit(ctx, conn, rows, size, nil)
			return nil, rideErr, err
		}
	}
	for range b.Len() - 1 - ridersStatements*min(len(riders), 1) {
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	if err == nil {
		err = readCommit(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return rode, nil, err
}

// appendTimeout bounds one AppendShared.
const appendTimeout = 15 * time.Second

var recordColumns = []string{"seq", "data", "hashes", "time", "namespace", "event", "agent", "session", "tool", "outcome"}

// copyRows returns the rows of entries for COPY, in recordColumns'
// order: each record's bytes and tree hashes, and what it holds for
// queries. The entries must follow one another.
func copyRows(entries []audit.Entry) ([][]any, error) {
	rows := make([][]any, len(entries))
	first := entries[0].Seq
	for i, e := range entries {
		if e.Seq != first+uint64(i) {
			return nil, fmt.Errorf("postgres: entry %d follows entry %d", e.Seq, first+uint64(i)-1)
		}
		if e.Seq > math.MaxInt64 {
			return nil, fmt.Errorf("postgres: entry %d is beyond the log's largest sequence number", e.Seq)
		}
		rec, err := e.Decoded()
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		rows[i] = []any{int64(e.Seq), e.Data, audit.PackHashes(e.Hashes), rec.Time.UnixMicro(),
			indexText(rec.Namespace), indexText(rec.Event), indexText(rec.Agent), indexText(rec.Session),
			indexText(rec.Tool), indexText(string(rec.Outcome))}
	}
	return rows, nil
}

// indexText is s as the record columns that find records for queries
// hold it: a PostgreSQL text holds no NUL, which a record may (an agent
// chooses its tools' names), so a NUL is held as U+FFFD. The columns only
// find candidates — Query checks each record's own bytes — so a name
// with a NUL and the same with U+FFFD share an index entry and are still
// told apart; a record with a NUL can't fail its append, and every call
// batched with it.
func indexText(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// Scan implements audit.Store.
func (s *AuditStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	if to <= from || from > math.MaxInt64 {
		return nil
	}
	rows, err := s.db.pool.Query(ctx, `SELECT seq, data, hashes FROM agentsec_audit_records
		WHERE seq >= $1 AND seq < $2 ORDER BY seq`, int64(from), clampSeq(to))
	if err != nil {
		return unavailable("scanning the log", err)
	}
	return each(rows, true, fn)
}

// clampSeq keeps a sequence number within PostgreSQL's bigint.
func clampSeq(seq uint64) int64 { return int64(min(seq, math.MaxInt64)) }

// each calls fn for each row of (seq, data[, hashes]) and closes rows.
func each(rows pgx.Rows, withHashes bool, fn func(audit.Entry) error) error {
	defer rows.Close()
	var hashes [audit.MaxStoredHashes]audit.Hash
	columns := 2
	if withHashes {
		columns = 3
	}
	fields := rows.FieldDescriptions()
	if len(fields) != columns {
		// A query that failed before its rows were described — its
		// connection lost, say — has none: rows.Err says why.
		rows.Close()
		if err := rows.Err(); err != nil {
			return unavailable("reading records", err)
		}
		return fmt.Errorf("postgres: records arrived in %d columns, want %d", len(fields), columns)
	}
	for _, fd := range fields[1:] {
		if fd.Format != pgx.BinaryFormatCode {
			return errors.New("postgres: records arrived in text format; use the default query mode")
		}
	}
	for rows.Next() {
		var seq int64
		dest := []any{&seq, nil} // nil: read from the raw values below
		if withHashes {
			dest = append(dest, nil)
		}
		if err := rows.Scan(dest...); err != nil {
			return unavailable("reading a record", err)
		}
		raw := rows.RawValues()
		e := audit.Entry{Seq: uint64(seq), Data: raw[1]}
		if withHashes {
			var err error
			if e.Hashes, err = audit.UnpackHashes(raw[2], &hashes); err != nil {
				return fmt.Errorf("postgres: record %d: %w", seq, err)
			}
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return unavailable("reading records", err)
	}
	return nil
}

// ReadHashes implements audit.Store.
func (s *AuditStore) ReadHashes(ctx context.Context, indexes []int64) ([]audit.Hash, error) {
	return readHashes(ctx, s.db.pool, indexes)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// readHashes reads tree hashes through q. The hash with stored index i
// was stored by the last record of its subtree, at its level's offset in
// that record's hashes; one query reads every record needed.
func readHashes(ctx context.Context, q querier, indexes []int64) ([]audit.Hash, error) {
	out := make([]audit.Hash, len(indexes))
	type slot struct{ i, level int }
	byRecord := map[int64][]slot{}
	var seqs []int64
	for i, idx := range indexes {
		rec, level, err := audit.HashHolder(idx)
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if _, ok := byRecord[rec]; !ok {
			seqs = append(seqs, rec)
		}
		byRecord[rec] = append(byRecord[rec], slot{i, level})
	}
	rows, err := q.Query(ctx, `SELECT seq, hashes FROM agentsec_audit_records WHERE seq = ANY($1)`, seqs)
	if err != nil {
		return nil, unavailable("reading tree hashes", err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var raw []byte
		if err := rows.Scan(&seq, &raw); err != nil {
			return nil, unavailable("reading tree hashes", err)
		}
		slots, ok := byRecord[seq]
		if !ok {
			// Only a table without its primary key returns a record twice.
			return nil, fmt.Errorf("postgres: record %d came twice, or unasked for: the records table is damaged", seq)
		}
		delete(byRecord, seq)
		for _, sl := range slots {
			h, ok := audit.HashAt(raw, sl.level)
			if !ok {
				return nil, fmt.Errorf("postgres: record %d has no tree hash at level %d", seq, sl.level)
			}
			out[sl.i] = h
		}
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("reading tree hashes", err)
	}
	if len(byRecord) != 0 {
		return nil, errors.New("postgres: a tree hash asked for is not stored")
	}
	return out, nil
}

// AddCheckpoint implements audit.Store.
func (s *AuditStore) AddCheckpoint(ctx context.Context, size uint64, signed []byte) error {
	if size > math.MaxInt64 {
		return fmt.Errorf("postgres: checkpoint of size %d is beyond the log's largest size", size)
	}
	// The statement returns the note stored for the size, this one or one
	// stored before — also by another appender at the same moment, whose
	// row the conflict waits for.
	var old []byte
	err := s.db.pool.QueryRow(ctx, `INSERT INTO agentsec_audit_checkpoints (size, note) VALUES ($1, $2)
		ON CONFLICT (size) DO UPDATE SET note = agentsec_audit_checkpoints.note RETURNING note`,
		int64(size), signed).Scan(&old)
	if err != nil {
		return unavailable("storing a checkpoint", err)
	}
	if !bytes.Equal(old, signed) {
		return fmt.Errorf("postgres: a different checkpoint of size %d is stored", size)
	}
	return nil
}

// Checkpoints implements audit.Store.
func (s *AuditStore) Checkpoints(ctx context.Context, fn func(uint64, []byte) error) error {
	rows, err := s.db.pool.Query(ctx, `SELECT size, note FROM agentsec_audit_checkpoints ORDER BY size`)
	if err != nil {
		return unavailable("reading checkpoints", err)
	}
	defer rows.Close()
	for rows.Next() {
		var size int64
		var note []byte
		if err := rows.Scan(&size, &note); err != nil {
			return unavailable("reading checkpoints", err)
		}
		if err := fn(uint64(size), note); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return unavailable("reading checkpoints", err)
	}
	return nil
}

// LatestCheckpoint implements audit.Store.
func (s *AuditStore) LatestCheckpoint(ctx context.Context) (uint64, []byte, error) {
	var size int64
	var note []byte
	err := s.db.pool.QueryRow(ctx, `SELECT size, note FROM agentsec_audit_checkpoints ORDER BY size DESC LIMIT 1`).Scan(&size, &note)
	if noRows(err) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, unavailable("reading the latest checkpoint", err)
	}
	return uint64(size), note, nil
}

// QueryEntries implements audit.Querier through the records' columns.
func (s *AuditStore) QueryEntries(ctx context.Context, f audit.Filter, from uint64, fn func(audit.Entry) error) error {
	if from > math.MaxInt64 {
		return nil
	}
	sql, args := querySQL(f, from)
	rows, err := s.db.pool.Query(ctx, sql, args...)
	if err != nil {
		return unavailable("querying the log", err)
	}
	return each(rows, false, fn)
}

// querySQL returns the query of QueryEntries and its arguments.
func querySQL(f audit.Filter, from uint64) (string, []any) {
	where := []string{"seq >= $1"}
	args := []any{int64(from)}
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	for _, c := range []struct{ col, v string }{
		{"namespace", f.Namespace}, {"event", f.Event}, {"agent", f.Agent},
		{"session", f.Session}, {"tool", f.Tool}, {"outcome", string(f.Outcome)},
	} {
		if c.v != "" {
			add(c.col+" = $%d", indexText(c.v))
		}
	}
	// The partial indexes' predicates, word for word, so that the
	// planner uses them.
	switch {
	case strings.HasPrefix(f.Event, "trust."):
		where = append(where, trustChangePredicate)
	case f.Event == "config.reload":
		where = append(where, reloadPredicate)
	}
	// The time column holds microseconds, rounded down; rounding the
	// bounds outwards keeps every record in range.
	if !f.Since.IsZero() {
		add("time >= $%d", f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		add("time < $%d", f.UntilMicro())
	}
	return `SELECT seq, data FROM agentsec_audit_records WHERE ` + strings.Join(where, " AND ") + ` ORDER BY seq`, args
}
