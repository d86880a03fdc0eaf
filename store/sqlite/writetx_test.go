package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestCancelledBeginLeavesNoTransaction: a BEGIN cancelled after SQLite
// ran it must not leave the writing connection inside a transaction,
// where the next one could not begin — a client hanging up at the wrong
// moment would otherwise fail the next audit append.
func TestCancelledBeginLeavesNoTransaction(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "a.db"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 2000 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%40)*5*time.Microsecond)
		if tx, err := s.begin(ctx); err == nil {
			tx.Rollback()
		}
		cancel()
		tx, err := s.begin(context.Background())
		if err != nil {
			t.Fatalf("after a begin cancelled at %v, the next begin fails: %v", time.Duration(i%40)*5*time.Microsecond, err)
		}
		tx.Rollback()
	}
}

// TestWriterKeepsTemporaryDataInMemory: the writing connection never
// spills to a temporary file (the indexer's statement journals), which
// would need a writable /var/tmp or /tmp.
func TestWriterKeepsTemporaryDataInMemory(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "a.db"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var store int
	if err := s.writer.QueryRowContext(context.Background(), "PRAGMA temp_store").Scan(&store); err != nil {
		t.Fatal(err)
	}
	if store != 2 { // MEMORY
		t.Errorf("the writer's temp_store is %d, want 2 (MEMORY)", store)
	}
}
