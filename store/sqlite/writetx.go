package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
)

// A writeTx is a write transaction on the store's one writing connection,
// begun and ended with plain BEGIN IMMEDIATE and COMMIT statements.
//
// database/sql's own transactions start a goroutine each to watch their
// context, and the driver starts another for any statement whose context
// can be cancelled. On an idle machine each such goroutine wakes a thread
// on another core, and an append, which should cost about one sync, paid
// for those wake-ups as well (see docs/benchmarks.md). A writeTx run with
// an uncancellable context, as the audit log's appends are, starts none.
type writeTx struct {
	conn *sql.Conn
	done bool
}

// begin starts a write transaction. Its statements run with ctx; the
// caller must end it with Commit or Rollback.
func (s *Store) begin(ctx context.Context) (*writeTx, error) {
	conn, err := s.writer.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		// A cancellation can come after SQLite ran BEGIN: roll back
		// whatever was begun, or the next transaction on this
		// connection would fail to begin inside it.
		t := &writeTx{conn: conn}
		return nil, errors.Join(err, t.Rollback())
	}
	return &writeTx{conn: conn}, nil
}

// ExecContext runs a statement within the transaction.
func (t *writeTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.conn.ExecContext(ctx, query, args...)
}

// QueryRowContext runs a query within the transaction.
func (t *writeTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return t.conn.QueryRowContext(ctx, query, args...)
}

// Commit commits the transaction. If COMMIT fails, the transaction is
// rolled back, should SQLite have left it open.
func (t *writeTx) Commit() error {
	if t.done {
		return sql.ErrTxDone
	}
	_, err := t.conn.ExecContext(context.Background(), "COMMIT")
	if err != nil {
		return errors.Join(err, t.Rollback())
	}
	t.done = true
	return t.conn.Close()
}

// Rollback abandons the transaction; after Commit it does nothing.
func (t *writeTx) Rollback() error {
	if t.done {
		return nil
	}
	t.done = true
	var err error
	if _, rerr := t.conn.ExecContext(context.Background(), "ROLLBACK"); rerr != nil && !noTransaction(rerr) {
		// The connection's state is unknown: don't give it back to the
		// pool, so the next transaction starts on a fresh one.
		err = rerr
		_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
	return errors.Join(err, t.conn.Close())
}

// noTransaction reports whether err is SQLite saying there was no
// transaction to roll back, as after a COMMIT or a failure that ended it.
func noTransaction(err error) bool {
	return strings.Contains(err.Error(), "no transaction is active")
}
