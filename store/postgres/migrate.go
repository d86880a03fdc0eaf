package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema's versions: migrations[i] takes a database
// from version i to version i+1. A released migration is never edited;
// a change to the schema is a new one at the end.
var migrations = [][]string{
	{ // 1: budgets and the audit log
		`CREATE TABLE agentsec_budgets (
			session     text PRIMARY KEY,
			token_limit bigint NOT NULL CHECK (token_limit > 0),
			call_limit  bigint NOT NULL CHECK (call_limit > 0),
			tokens_used bigint NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
			calls_used  bigint NOT NULL DEFAULT 0 CHECK (calls_used >= 0),
			created     timestamptz NOT NULL DEFAULT now()
		)`,
		// The log's head: its size, which every append locks, and
		// advances in the transaction that inserts its records.
		`CREATE TABLE agentsec_audit_head (
			id   boolean PRIMARY KEY DEFAULT true CHECK (id),
			size bigint NOT NULL CHECK (size >= 0)
		)`,
		`INSERT INTO agentsec_audit_head (size) VALUES (0)`,
		// A record's canonical bytes and tree hashes, and for queries
		// what it holds, as its appender decoded it.
		`CREATE TABLE agentsec_audit_records (
			seq       bigint PRIMARY KEY CHECK (seq >= 0),
			data      bytea NOT NULL,
			hashes    bytea NOT NULL,
			time      bigint NOT NULL, -- Unix microseconds, rounded down
			namespace text NOT NULL,
			event     text NOT NULL,
			agent     text NOT NULL,
			session   text NOT NULL,
			tool      text NOT NULL,
			outcome   text NOT NULL
		)`,
		// Every index costs each append, under the log's lock: a b-tree
		// for the common query, a session's records; a BRIN index, next
		// to free to keep, for time, which rises with seq. Queries by
		// agent or tool read the records in seq order.
		`CREATE INDEX agentsec_audit_by_session ON agentsec_audit_records (session, seq)`,
		`CREATE INDEX agentsec_audit_by_time ON agentsec_audit_records USING brin (time)`,
		`CREATE TABLE agentsec_audit_checkpoints (
			size bigint PRIMARY KEY CHECK (size >= 0),
			note bytea NOT NULL
		)`,
		// The gateway's MCP sessions, so that any replica can serve one.
		`CREATE TABLE agentsec_sessions (
			id          text PRIMARY KEY,
			agent       text NOT NULL,
			init        bytea NOT NULL,
			created     timestamptz NOT NULL DEFAULT now(),
			last_active timestamptz NOT NULL DEFAULT now()
		)`,
		`CREATE INDEX agentsec_sessions_by_last_active ON agentsec_sessions (last_active)`,
	},
	{ // 2: an ended session stays a while, so that no replica revives its budget
		`ALTER TABLE agentsec_sessions ADD COLUMN ended timestamptz`,
		`CREATE INDEX agentsec_sessions_by_ended ON agentsec_sessions (ended) WHERE ended IS NOT NULL`,
	},
	{ // 3: trust changes, which every replica reads at start and every quarter second
		// A partial index costs the appends of other records nothing
		// but the test of its predicate. QueryEntries repeats the
		// predicate word for word, so that the planner uses it.
		`CREATE INDEX agentsec_audit_trust_changes ON agentsec_audit_records (seq) WHERE ` + trustChangePredicate,
	},
	{ // 4: reloads' closing records, which a trust replay reads with the changes
		`CREATE INDEX agentsec_audit_reloads ON agentsec_audit_records (seq) WHERE ` + reloadPredicate,
	},
}

// reloadPredicate selects the closing records of reloads, which put a
// reload's trust changes into force on replay.
const reloadPredicate = `event = 'config.reload'`

// trustChangePredicate selects the trust changes: the "trust.assign" and
// "trust.revoke" records agentsec.TrustGate reads back.
const trustChangePredicate = `event LIKE 'trust.%'`

// currentVersion is the schema version this agentsec reads and writes.
var currentVersion = len(migrations)

// migrateLock is the advisory lock Migrate holds, so that two replicas
// migrating at once take turns.
const migrateLock = 0x6167656e74736563 // "agentsec"

// Migrate brings the schema of the database at dsn to this agentsec's
// version, creating it in an empty database, and returns the versions
// before and after. It refuses a database with a newer schema. Each step
// runs in one transaction, so a failed migration leaves the schema as it
// was.
func Migrate(ctx context.Context, dsn string) (from, to int, err error) {
	pool, err := connect(ctx, dsn)
	if err != nil {
		return 0, 0, err
	}
	defer pool.Close()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS agentsec_meta (key text PRIMARY KEY, value text NOT NULL)`); err != nil {
			return err
		}
		if from, err = readVersion(ctx, tx); err != nil {
			return err
		}
		if from > currentVersion {
			return fmt.Errorf("the database has schema version %d, newer than this agentsec's %d; run a newer agentsec", from, currentVersion)
		}
		for v := from; v < currentVersion; v++ {
			for _, stmt := range migrations[v] {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("migrating to version %d: %w", v+1, err)
				}
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO agentsec_meta (key, value) VALUES ('schema_version', $1)
			ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`, strconv.Itoa(currentVersion))
		return err
	})
	if err != nil {
		return 0, 0, unavailable("migrating", err)
	}
	return from, currentVersion, nil
}

// schemaVersion returns the database's schema version, 0 if it has none.
func schemaVersion(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('agentsec_meta') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, unavailable("reading the schema version", err)
	}
	if !exists {
		return 0, nil
	}
	v, err := readVersion(ctx, pool)
	if err != nil {
		return 0, unavailable("reading the schema version", err)
	}
	return v, nil
}

type queryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readVersion(ctx context.Context, q queryRower) (int, error) {
	var s string
	err := q.QueryRow(ctx, `SELECT value FROM agentsec_meta WHERE key = 'schema_version'`).Scan(&s)
	if noRows(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return 0, errors.New("the stored schema version " + strconv.Quote(s) + " is not a number")
	}
	return v, nil
}
