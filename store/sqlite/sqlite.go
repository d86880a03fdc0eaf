// Package sqlite is agentsec's embedded store: the audit log in one SQLite
// database file, through modernc.org/sqlite (no cgo).
//
// The database runs in WAL mode with synchronous=FULL, so a transaction is
// on stable storage when it commits; the audit log commits each group of
// concurrent appends in one transaction. A record's row holds its
// canonical bytes and tree hashes. For queries, a separate index table
// holds each record's time, namespace, event, agent, session, tool and
// outcome; its rows ride along with a later append's transaction, so most
// appends write one page. Index rows only find candidates: audit.Query
// checks every record it returns against its own bytes.
//
// A writable Store is its database's one writer: it holds a lock on the
// file <path>.lock beside the database until Close, and Open refuses a
// second writer, naming the first (see Open). Readers need no lock.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	msqlite "modernc.org/sqlite"

	"github.com/agentsec/agentsec/audit"
)

// Options configure Open.
type Options struct {
	// Create makes the database file if it does not exist. Without it a
	// missing file is an error, so a mistyped path can't silently start a
	// second, empty log.
	Create bool
	// ReadOnly opens the database for reading only, as the audit CLI
	// does; appends then fail. Only a writable Store takes the
	// database's lock, so a ReadOnly one opens while a writer runs.
	ReadOnly bool
}

// Store is an audit.Store and audit.Querier in a SQLite database. It is
// safe for concurrent use: writes go through one connection, reads through
// a small pool.
type Store struct {
	path   string
	writer *sql.DB
	reader *sql.DB
	lock   *os.File // the writer's lock on the database; nil if ReadOnly (see lock.go)

	// appendMu serializes appends and guards nextSeq, the size of the log
	// as this store last wrote or read it, and pending, the index rows of
	// records not yet in audit_index. Another process appending to the
	// same database makes the next append here fail on its sequence
	// number rather than fork the log.
	appendMu sync.Mutex
	nextSeq  uint64
	// closed is set, under appendMu, when Close begins: no append or
	// flush starts after it.
	closed atomic.Bool

	// A writable Store's record log, the tail of its records not yet in
	// the database, and the goroutines that commit the tail (the
	// indexer) and checkpoint the database (see recordlog.go and
	// tail.go). committed is the size of the log in the database.
	rlog         *recordLog
	tail         *tail
	committed    atomic.Uint64
	indexMu      sync.Mutex            // held while the tail is committed
	indexErr     atomic.Pointer[error] // why the indexer failed, if it did
	indexed      int                   // records committed from the tail since the last checkpoint was asked for
	stopIndexer  chan struct{}
	indexerDone  chan struct{}
	abandoned    atomic.Bool // set by tests that leave the tail as a crash would
	checkpointer *sql.DB
	checkpoints  chan struct{}
	checkpointed chan struct{}
}

var (
	_ audit.Store   = (*Store)(nil)
	_ audit.Querier = (*Store)(nil)
)

// schemaVersion is the version of the schema below; Open refuses a
// database with another one.
const schemaVersion = "1"

var schema = []string{
	`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT`,
	`CREATE TABLE audit_records (
		seq    INTEGER PRIMARY KEY,
		data   BLOB NOT NULL,
		hashes BLOB NOT NULL
	) STRICT`,
	// The query index: what each record holds, derived from its bytes,
	// written some appends after the record (see index.go).
	`CREATE TABLE audit_index (
		seq       INTEGER PRIMARY KEY,
		time      INTEGER NOT NULL, -- Unix microseconds, rounded down
		namespace TEXT NOT NULL,
		event     TEXT NOT NULL,
		agent     TEXT NOT NULL,
		session   TEXT NOT NULL,
		tool      TEXT NOT NULL,
		outcome   TEXT NOT NULL
	) STRICT`,
	`CREATE INDEX audit_by_time ON audit_index (time)`,
	`CREATE INDEX audit_by_namespace ON audit_index (namespace, seq)`,
	`CREATE INDEX audit_by_event ON audit_index (event, seq)`,
	`CREATE INDEX audit_by_agent ON audit_index (agent, seq)`,
	`CREATE INDEX audit_by_session ON audit_index (session, seq)`,
	`CREATE INDEX audit_by_tool ON audit_index (tool, seq)`,
	`CREATE INDEX audit_by_outcome ON audit_index (outcome, seq)`,
	`CREATE TABLE audit_checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL) STRICT`,
	`INSERT INTO meta (key, value) VALUES ('schema_version', '` + schemaVersion + `')`,
}

// Open opens the SQLite database at path.
//
// Unless opts.ReadOnly is set, the Store is the database's one writer: it
// holds an exclusive lock on the file <path>.lock until Close, and Open
// returns an *InUseError, naming the holder, while another Store — in
// this process or another — holds it. The lock is taken before the
// schema is created or read, so of two processes starting at once on a
// new database one creates it and the other gets the *InUseError.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	fi, statErr := os.Stat(path)
	exists := statErr == nil
	switch {
	case statErr != nil && !errors.Is(statErr, os.ErrNotExist):
		return nil, fmt.Errorf("sqlite: %w", statErr)
	case exists && !fi.Mode().IsRegular():
		// A FIFO would block SQLite's open for good.
		return nil, fmt.Errorf("sqlite: %s is not a regular file (%v)", path, fi.Mode().Type())
	case !exists && (!opts.Create || opts.ReadOnly):
		return nil, fmt.Errorf("sqlite: no database at %s (check the path; agentsec creates the database when it first starts with it)", path)
	}
	// Sync commits with fdatasync: as durable as fsync, without also
	// flushing file timestamps.
	if _, err := msqlite.Fdatasync(true); err != nil && !errors.Is(err, msqlite.ErrFdatasyncUnavailable) {
		return nil, fmt.Errorf("sqlite: %w", err)
	}

	s := &Store{path: path}
	var err error
	if !opts.ReadOnly {
		if s.lock, err = lockDatabase(path); err != nil {
			return nil, err
		}
		// The database's commits are not synced: the record log's are
		// (see recordlog.go), and the checkpointer syncs the database.
		// Temporary data stays in memory: the indexer's multi-row
		// inserts keep statement journals, which SQLite would otherwise
		// spill past 64 KiB to a file in /var/tmp or /tmp — a directory
		// a container's read-only root may not offer, and whose failure
		// would stop the log.
		s.writer, err = openDB(path, "rwc", 1,
			"journal_mode(WAL)", "synchronous(NORMAL)", "wal_autocheckpoint(0)", "busy_timeout(10000)", "temp_store(MEMORY)")
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	s.reader, err = openDB(path, map[bool]string{true: "ro", false: "rw"}[opts.ReadOnly], 4,
		"busy_timeout(10000)", "query_only(1)")
	if err != nil {
		s.Close()
		return nil, err
	}
	if err := s.prepare(ctx, opts.Create); err != nil {
		s.Close()
		return nil, err
	}
	if s.writer == nil {
		if err := s.recoverForReader(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	if s.writer != nil {
		if s.nextSeq, err = s.size(ctx, s.writer); err != nil {
			s.Close()
			return nil, err
		}
		if s.checkpointer, err = openCheckpointer(path); err != nil {
			s.Close()
			return nil, err
		}
		if err := s.recoverRecords(ctx); err != nil {
			s.Close()
			return nil, err
		}
		if err := s.catchUpIndex(ctx); err != nil {
			s.Close()
			return nil, err
		}
		s.checkpoints, s.checkpointed = make(chan struct{}, 1), make(chan struct{})
		go s.runCheckpoints()
		s.tail = newTail(s.nextSeq)
		s.stopIndexer, s.indexerDone = make(chan struct{}), make(chan struct{})
		go s.runIndexer(s.stopIndexer)
	}
	return s, nil
}

func openDB(path, mode string, conns int, pragmas ...string) (*sql.DB, error) {
	q := url.Values{"mode": {mode}} // writes begin their own transactions: see writetx.go
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	return db, nil
}

// prepare creates the schema in a new database, if create is set, and
// checks the schema's version.
func (s *Store) prepare(ctx context.Context, create bool) error {
	if create && s.writer != nil {
		// Under the lock no one else writes the database, so a database
		// without tables is new: just created, or left empty by a first
		// start that died before its schema committed.
		var tables int
		if err := s.writer.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema`).Scan(&tables); err != nil {
			return s.wrap("reading schema", err)
		}
		create = tables == 0
	}
	if create && s.writer != nil {
		tx, err := s.begin(ctx)
		if err != nil {
			return s.wrap("creating schema", err)
		}
		defer tx.Rollback()
		for _, stmt := range schema {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return s.wrap("creating schema", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return s.wrap("creating schema", err)
		}
	}
	var version string
	err := s.reader.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version)
	switch {
	case err != nil:
		return s.wrap("reading schema version", err)
	case version != schemaVersion:
		return fmt.Errorf("sqlite: %s has schema version %s; this agentsec reads version %s", s.path, version, schemaVersion)
	}
	return nil
}

// wrap adds context and a hint to a database error.
func (s *Store) wrap(what string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "file is not a database"), strings.Contains(msg, "malformed"):
		return fmt.Errorf("sqlite: %s: %s is not an agentsec database or is corrupt: %w", what, s.path, err)
	case strings.Contains(msg, "no such table"):
		return fmt.Errorf("sqlite: %s: %s is not an agentsec database: %w", what, s.path, err)
	}
	return fmt.Errorf("sqlite: %s: %w", what, err)
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close writes the index rows still pending, closes the database and
// releases its lock.
func (s *Store) Close() error {
	var errs []error
	// Appends stop first, while the indexer still makes room in the tail
	// for one that waits for it; then the indexer commits the tail and
	// returns, and a Flush waits for the rest of Close and does nothing.
	s.appendMu.Lock()
	s.closed.Store(true)
	s.appendMu.Unlock()
	if s.stopIndexer != nil {
		close(s.stopIndexer)
		<-s.indexerDone
		s.stopIndexer = nil
	}
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	errs = append(errs, s.closeRecordLog())
	if s.writer != nil {
		errs = append(errs, s.writer.Close())
	}
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	// Last, so that the next writer starts after this one's last write.
	if s.lock != nil {
		errs = append(errs, unlockDatabase(s.lock))
		s.lock = nil
	}
	return errors.Join(errs...)
}
