package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/agentsec/agentsec/audit"
)

// A writable Store keeps two copies of what it appends. The record log
// (segments.go) is the durable one: an append returns once its records
// are synced there. The database is the one reads use, and it is
// committed without a sync of its own (synchronous=NORMAL): its commits
// reach stable storage when a checkpoint of SQLite's write-ahead log
// syncs them, which a goroutine of the store's does in the background,
// after every checkpointCommits commits. A segment of the record log is
// reused once every record in it is durable in the database.
//
// What a crash can lose: a crash of the process, SIGKILL included, loses
// nothing that was committed, since the operating system holds what the
// process wrote. A crash of the machine can lose the database's commits
// since its last checkpoint, and the next Open replays them from the
// record log, whose appends were synced before they returned. Neither
// loses an append that returned nil; an append that had not returned may
// or may not be there, whole.

// checkpointRecords is how many records the indexer commits to the
// database before the store checkpoints it in the background. Tests
// make it smaller.
var checkpointRecords = 4096

// testHook, if set, is called at named points of an append, for tests
// that stop the process there.
var testHook = func(point string) {}

// recoverRecords replays into the database the records and checkpoints
// of the record log that the database lacks, makes the database durable,
// and starts the record log anew.
func (s *Store) recoverRecords(ctx context.Context) error {
	rlog, frames, err := openRecordLog(segmentsDir(s.path))
	if err != nil {
		return err
	}
	s.rlog = rlog
	if err := s.checkLoggedRecords(ctx, frames); err != nil {
		return err
	}
	var entries []audit.Entry
	var hashes [audit.MaxStoredHashes]audit.Hash
	next := s.nextSeq
	for _, f := range frames {
		switch {
		case f.kind != frameRecord || f.seq < next:
			continue
		case f.seq > next:
			return fmt.Errorf("sqlite: the record log in %s lacks records %d to %d, which the database lacks too: the log is damaged; run agentsec audit verify",
				rlog.dir, next, f.seq-1)
		}
		hs, err := audit.UnpackHashes(f.hashes, &hashes)
		if err != nil {
			return fmt.Errorf("sqlite: record log: record %d: %w", f.seq, err)
		}
		entries = append(entries, audit.Entry{Seq: f.seq, Data: f.data, Hashes: append([]audit.Hash(nil), hs...)})
		next++
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return s.wrap("replaying the record log", err)
	}
	defer tx.Rollback()
	if len(entries) > 0 {
		if _, err := s.insertRecords(ctx, tx, entries, s.nextSeq); err != nil {
			return fmt.Errorf("replaying the record log: %w", err)
		}
	}
	for _, f := range frames {
		if f.kind == frameCheckpoint && f.seq <= next {
			if _, err := insertCheckpoint(ctx, tx, f.seq, f.data); err != nil {
				return fmt.Errorf("replaying the record log: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return s.wrap("replaying the record log", err)
	}
	s.nextSeq = next
	s.committed.Store(next)
	// Until the database is durable, the record log's segments hold the
	// only durable copy of its latest records: if it can't be made
	// durable now, as while a reader holds an old snapshot, appends go
	// to a segment of their own until a later checkpoint.
	durable := uint64(0)
	if s.checkpointDatabase(ctx, "FULL") == nil {
		durable = next
	}
	return rlog.restart(durable)
}

// errWrittenByAnother is why a writable Store refuses to open a database
// whose records differ from the record log's copies, or a record log that
// holds a record twice with different bytes.
var errWrittenByAnother = errors.New("the database was written by another hand")

// checkLoggedRecords checks that the records the record log holds which
// the database holds too are the same bytes in both. They are, unless
// someone wrote the database: the record log is then the only copy that
// shows it for records no checkpoint signs yet, and it is reused once the
// database is durable, so the store refuses to open instead.
func (s *Store) checkLoggedRecords(ctx context.Context, frames []frame) error {
	logged := map[uint64]frame{}
	from := uint64(math.MaxUint64)
	for _, f := range frames {
		if f.kind == frameRecord && f.seq < s.nextSeq {
			logged[f.seq] = f
			from = min(from, f.seq)
		}
	}
	if len(logged) == 0 {
		return nil
	}
	rows, err := s.writer.QueryContext(ctx, `SELECT seq, data, hashes FROM audit_records WHERE seq >= ? AND seq < ?`,
		int64(from), int64(s.nextSeq))
	if err != nil {
		return s.wrap("comparing the record log with the database", err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var data, hashes []byte
		if err := rows.Scan(&seq, &data, &hashes); err != nil {
			return s.wrap("comparing the record log with the database", err)
		}
		if f, ok := logged[uint64(seq)]; ok && (!bytes.Equal(f.data, data) || !bytes.Equal(f.hashes, hashes)) {
			return fmt.Errorf("sqlite: record %d in the database differs from its copy in the record log in %s: %w; run agentsec audit verify", seq, s.rlog.dir, errWrittenByAnother)
		}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("comparing the record log with the database", err)
	}
	return nil
}

// recoverForReader makes a read-only Store see what a crashed writer
// left only in the record log: if the record log holds records or a
// checkpoint the database lacks and no writer holds the database, it
// opens the database to write once, which replays them.
//
// Where writers are not locked out (locksWriters), that open can't tell
// a crashed writer from a running one, whose tail of records it would
// replay under it: there a reader sees what the database holds, and the
// next writer replays the rest.
func (s *Store) recoverForReader(ctx context.Context) error {
	if !locksWriters {
		return nil
	}
	frames, err := readSegments(segmentsDir(s.path))
	if errors.Is(err, errWrittenByAnother) {
		return nil // as below: the reader sees what the database holds
	}
	if err != nil || len(frames) == 0 {
		return err
	}
	size, err := s.size(ctx, s.reader)
	if err != nil {
		return err
	}
	latest, _, err := s.LatestCheckpoint(ctx)
	if err != nil {
		return err
	}
	lacking := false
	for _, f := range frames {
		if (f.kind == frameRecord && f.seq >= size) || (f.kind == frameCheckpoint && f.seq > latest) {
			lacking = true
		}
	}
	if !lacking {
		return nil
	}
	w, err := Open(ctx, s.path, Options{})
	var inUse *InUseError
	switch {
	case errors.As(err, &inUse):
		return nil // the writer replayed them when it opened
	case errors.Is(err, errWrittenByAnother):
		// No writer opens such a store; a reader sees what the database
		// holds, and verification finds what a checkpoint covers.
		return nil
	case err != nil:
		return fmt.Errorf("sqlite: the record log in %s holds records the database lacks, left by a writer that stopped; replaying them failed: %w",
			segmentsDir(s.path), err)
	}
	return w.Close()
}

// checkpointDatabase checkpoints SQLite's write-ahead log into the
// database, in the given mode, and syncs it; it reports an error unless
// every commit made before it is then on stable storage.
func (s *Store) checkpointDatabase(ctx context.Context, mode string) error {
	var busy, frames, done int
	err := s.checkpointer.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &frames, &done)
	switch {
	case err != nil:
		return s.wrap("checkpointing", err)
	case busy != 0 || frames != done:
		return fmt.Errorf("sqlite: checkpoint in %s mode stopped after %d of %d pages", mode, done, frames)
	}
	return nil
}

// checkpointSoon asks the background checkpointer to run.
func (s *Store) checkpointSoon() {
	select {
	case s.checkpoints <- struct{}{}:
	default:
	}
}

// runCheckpoints checkpoints the database each time it is asked to,
// until the channel closes, and then tells the record log which records
// are durable in the database.
func (s *Store) runCheckpoints() {
	defer close(s.checkpointed)
	for range s.checkpoints {
		committed := s.committed.Load()
		if err := s.checkpointDatabase(context.Background(), "PASSIVE"); err == nil {
			s.rlog.durable.Store(committed)
		}
	}
}

// openCheckpointer opens the connection the background checkpoints use.
func openCheckpointer(path string) (*sql.DB, error) {
	return openDB(path, "rw", 1, "busy_timeout(10000)", "synchronous(FULL)")
}

// closeRecordLog stops the checkpointer, checkpoints the database a last
// time and closes the record log, as far as Open got to start them.
func (s *Store) closeRecordLog() error {
	var errs []error
	if s.checkpoints != nil {
		close(s.checkpoints)
		<-s.checkpointed
		s.checkpoints = nil
		// A checkpoint that can't complete now loses nothing: the
		// record log keeps what the database may lack, and the next
		// Open replays it.
		_ = s.checkpointDatabase(context.Background(), "FULL")
	}
	if s.rlog != nil {
		s.appendMu.Lock()
		errs = append(errs, s.rlog.close())
		s.appendMu.Unlock()
	}
	if s.checkpointer != nil {
		errs = append(errs, s.checkpointer.Close())
		s.checkpointer = nil
	}
	return errors.Join(errs...)
}
