// Package postgres is agentsec's shared store: budgets and the audit log
// in one PostgreSQL database, so that several replicas of the gateway
// enforce one budget per session and append to one log.
//
// The schema is created and upgraded only by Migrate (the "agentsec
// migrate" command), never as a side effect of opening the store: Open
// refuses a database whose schema is missing or of another version, and
// says what to run.
//
// A budget reservation is one statement that takes a call slot only if
// the session has one, so the check and the change are one atomic step in
// the database. Reservations, and token counts, that callers make at once
// go in together, one statement and one commit for the batch. The audit log is an audit.SharedStore: each batch of records
// is appended under the lock of the log's head row, continuing the tree
// the database holds, so replicas append to one log that can't fork.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A DB is a connection pool to an agentsec database. Its Budgets and
// Audit stores share the pool; it is closed once the DB and every store
// taken from it are closed.
type DB struct {
	pool *pgxpool.Pool

	mu   sync.Mutex
	refs int

	// riders are the budget stores whose reservations ride the DB's
	// appends (riders.go), and riderSQL their statement.
	riders   atomic.Pointer[[]*BudgetStore]
	riderSQL string
}

// Open connects to the database at dsn, a PostgreSQL connection string
// ("postgres://user:password@host:5432/agentsec" or key=value pairs), and
// checks that its schema is the one this agentsec uses.
func Open(ctx context.Context, dsn string) (*DB, error) {
	pool, err := connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	version, err := schemaVersion(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	switch {
	case version == 0:
		pool.Close()
		return nil, errors.New("postgres: the database has no agentsec schema; create it with 'agentsec migrate -config FILE'")
	case version < currentVersion:
		pool.Close()
		return nil, fmt.Errorf("postgres: the database has schema version %d and this agentsec uses %d; upgrade it with 'agentsec migrate -config FILE'", version, currentVersion)
	case version > currentVersion:
		pool.Close()
		return nil, fmt.Errorf("postgres: the database has schema version %d, newer than this agentsec's %d; run a newer agentsec", version, currentVersion)
	}
	return &DB{pool: pool, refs: 1, riderSQL: reserveLocked}, nil
}

// defaultMaxConns is the most connections a DB's pool opens, unless the
// connection string sets pool_max_conns.
const defaultMaxConns = 32

// requireDurableCommits makes the connections' commits wait for the
// server's WAL to reach disk, whatever the database's, the role's or the
// server's default: a reservation must be durable before its call runs,
// and a record before its answer goes (a DBA's "synchronous_commit = off",
// a common tuning, would let a database crash forget slots whose calls
// ran). A connection string may choose among the settings that flush
// locally — on, local, remote_write, remote_apply — and is refused if it
// asks for off. The lazy token counts turn it off for their own
// transactions alone (SET LOCAL).
func requireDurableCommits(params map[string]string) error {
	const key = "synchronous_commit"
	v, set := params[key]
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "yes", "1", "local", "remote_write", "remote_apply":
		return nil
	case "":
		if !set {
			params[key] = "on"
			return nil
		}
	}
	return fmt.Errorf("postgres: the connection string sets synchronous_commit=%q, which would acknowledge reservations and audit records before they are on disk; remove it, or choose on, local, remote_write or remote_apply", v)
}

// connect makes a pool and checks that the server answers.
func connect(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message may quote the connection string, password and
		// all; say only what is wrong with it.
		return nil, errors.New("postgres: the connection string is not valid (want postgres://user:password@host:port/database or key=value pairs)")
	}
	// A replica that stops mid-transaction — frozen, partitioned — must
	// not hold the log's head, or a budget row, for good: the server ends
	// a transaction idle that long, and a statement waits that long for a
	// lock at most. Settings in the connection string win.
	for k, v := range map[string]string{
		"idle_in_transaction_session_timeout": "10s",
		"lock_timeout":                        "10s",
		"statement_timeout":                   "30s",
	} {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	if err := requireDurableCommits(cfg.ConnConfig.RuntimeParams); err != nil {
		return nil, err
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		// pgx's default, the number of CPUs, leaves a gateway's calls
		// queueing for a connection while each waits on a commit.
		cfg.MaxConns = defaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connecting to %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return pool, nil
}

// Budgets returns the DB's budget store. Close it when done.
func (db *DB) Budgets() *BudgetStore {
	s := newBudgetStore(db)
	db.setRider(s, true)
	return s
}

// Audit returns the DB's audit log store. Close it when done.
func (db *DB) Audit() *AuditStore { return &AuditStore{ref: db.ref()} }

// Sessions returns the DB's session store. Close it when done.
func (db *DB) Sessions() *SessionStore { return &SessionStore{db.ref()} }

// A ref is a store's hold on its DB's pool.
type ref struct {
	db   *DB
	once sync.Once
}

func (db *DB) ref() ref {
	db.mu.Lock()
	db.refs++
	db.mu.Unlock()
	return ref{db: db}
}

// Close releases the store's hold on the DB's pool; a second Close does
// nothing.
func (r *ref) Close() error {
	r.once.Do(func() { r.db.Close() })
	return nil
}

// Close releases the caller's hold on the pool, which closes once every
// store taken from the DB is closed too.
func (db *DB) Close() error {
	db.mu.Lock()
	db.refs--
	last := db.refs == 0
	db.mu.Unlock()
	if last {
		db.pool.Close()
	}
	return nil
}

// unavailable wraps a database error for the caller: what was being done,
// and the error, with PostgreSQL's detail when there is one.
func unavailable(what string, err error) error {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Detail != "" {
		return fmt.Errorf("postgres: %s: %w (%s)", what, err, pe.Detail)
	}
	return fmt.Errorf("postgres: %s: %w", what, err)
}

// readCommit reads the result of a batch's COMMIT: a transaction that
// ends in anything but COMMIT — one already aborted ends in ROLLBACK,
// without an error — is a failure.
func readCommit(br pgx.BatchResults) error {
	tag, err := br.Exec()
	if err == nil && tag.String() != "COMMIT" {
		err = fmt.Errorf("the transaction ended in %s", tag)
	}
	return err
}

// noRows reports whether err is a query's finding no row.
func noRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
