package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// The record log against someone who can write files on the host: what
// they leave in the segments' directory is refused, naming it, or left
// alone — never followed, blocked on, read whole, or trusted over the
// database.

// hostileLog returns the path of a store holding n records, abandoned
// as a crash leaves it: its latest records in the record log, and in the
// database too if flushed.
func hostileLog(t *testing.T, n int, flushed bool) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(ctx, path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	logRecords(t, s, n)
	if flushed {
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	Abandon(s)
	return path
}

// logRecords opens a log on s and appends n records to it.
func logRecords(t *testing.T, s *Store, n int) *audit.Log {
	t.Helper()
	l, err := audit.NewLog(context.Background(), s, audit.Options{Namespace: "hostile", CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := l.Log(context.Background(), audit.Record{Event: "tool.call", Agent: "a", Tool: "t", Outcome: audit.OutcomeAllowed}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// openWithin opens path, writable or read-only, and fails the test if
// that takes more than 10 s; it returns Open's error.
func openWithin(t *testing.T, path string, readOnly bool) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		s, err := Open(context.Background(), path, Options{ReadOnly: readOnly})
		if err == nil {
			err = s.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("Open (read-only %t) did not return", readOnly)
		return nil
	}
}

func TestSegmentThatIsNotAFile(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no FIFOs or symlinks to test on Windows")
	}
	t.Run("fifo", func(t *testing.T) {
		path := hostileLog(t, 3, false)
		if err := syscall.Mkfifo(filepath.Join(segmentsDir(path), segmentName(7)), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{false, true} {
			if err := openWithin(t, path, ro); err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("read-only %t: Open = %v, want the FIFO refused", ro, err)
			}
		}
	})
	t.Run("symlink", func(t *testing.T) {
		path := hostileLog(t, 3, false)
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(victim, []byte("the gateway's key"), 0o600); err != nil {
			t.Fatal(err)
		}
		seg := filepath.Join(segmentsDir(path), segmentName(0))
		if err := os.Remove(seg); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, seg); err != nil {
			t.Fatal(err)
		}
		if err := openWithin(t, path, false); err == nil {
			t.Error("Open followed a segment that is a symlink")
		}
		if b, _ := os.ReadFile(victim); string(b) != "the gateway's key" {
			t.Errorf("the symlink's target was written: %d bytes, starting %q", len(b), b[:min(len(b), 16)])
		}
	})
	t.Run("huge", func(t *testing.T) {
		path := hostileLog(t, 3, false)
		seg := filepath.Join(segmentsDir(path), segmentName(7))
		f, err := os.Create(seg)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Truncate(maxSegmentBytes() + 1) // sparse: costs no disk
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := openWithin(t, path, false); err == nil || !strings.Contains(err.Error(), "more than a segment can") {
			t.Errorf("Open = %v, want the huge segment refused", err)
		}
	})
}

// A database file that is a FIFO is refused: SQLite's open of it would
// block for good.
func TestDatabaseThatIsNotAFile(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no FIFOs on Windows")
	}
	path := filepath.Join(t.TempDir(), "audit.db")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		if err := openWithin(t, path, ro); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("read-only %t: Open = %v, want the FIFO refused", ro, err)
		}
	}
}

// A segment whose number is the largest int is not ours: the log goes on
// from its own, keeps every record, and never wraps to a negative one.
func TestSegmentNumberOutOfRange(t *testing.T) {
	restore := SetSegmentSize(4<<10, 1000, time.Hour)
	defer restore()
	path := hostileLog(t, 1, false)
	if err := os.WriteFile(filepath.Join(segmentsDir(path), "9223372036854775807.seg"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	logRecords(t, s, 60) // several segments of 4 KiB
	Abandon(s)
	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.Size(ctx); err != nil || n != 61 {
		t.Errorf("after reopening: %d records, %v; want 61", n, err)
	}
}

// A record the record log holds twice with different bytes, or that the
// database holds with other bytes than the record log's, was written by
// another hand: a writer refuses to open (it would reuse the segment,
// the evidence), and a reader opens on what the database holds.
func TestRecordLogDisagrees(t *testing.T) {
	t.Run("twice in the record log", func(t *testing.T) {
		path := hostileLog(t, 3, false)
		frames, err := readSegments(segmentsDir(path))
		if err != nil || len(frames) == 0 {
			t.Fatalf("readSegments = %d frames, %v", len(frames), err)
		}
		forged := frames[0]
		forged.data = []byte(`{"forged":true}`)
		b := appendHeader(nil, 1)
		b, _ = appendFrame(b, 1, forged)
		if err := os.WriteFile(filepath.Join(segmentsDir(path), segmentName(9)), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := openWithin(t, path, false); !errors.Is(err, errWrittenByAnother) {
			t.Errorf("Open = %v, want it refused as written by another hand", err)
		}
		if err := openWithin(t, path, true); err != nil {
			t.Errorf("read-only Open = %v, want it to open on the database", err)
		}
	})
	t.Run("the database differs", func(t *testing.T) {
		// The database and the record log both hold the records, as
		// between the indexer's commit and the segment's reuse.
		path := hostileLog(t, 3, true)
		db, err := sql.Open("sqlite", "file:"+path)
		if err != nil {
			t.Fatal(err)
		}
		res, err := db.Exec(`UPDATE audit_records SET data = CAST('{"forged":true}' AS BLOB) WHERE seq = 1`)
		db.Close()
		if n, _ := res.RowsAffected(); err != nil || n != 1 {
			t.Fatalf("forging record 1: %d rows, %v", n, err)
		}
		if err := openWithin(t, path, false); !errors.Is(err, errWrittenByAnother) {
			t.Errorf("Open = %v, want it refused as written by another hand", err)
		}
		if err := openWithin(t, path, true); err != nil {
			t.Errorf("read-only Open = %v, want it to open on the database", err)
		}
	})
}
