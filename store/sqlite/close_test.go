package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// closeTestEntries returns n well-formed entries from seq on (the indexer
// decodes their bytes; their tree hashes are not checked here).
func closeTestEntries(t *testing.T, from uint64, n int) []audit.Entry {
	t.Helper()
	data, err := audit.EncodeRecord(nil, &audit.Record{Time: time.Unix(1, 0).UTC(), Namespace: "ns", Event: "tool.call",
		Agent: "a", Session: "s", Tool: "t", Outcome: audit.OutcomeAllowed})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]audit.Entry, n)
	for i := range out {
		out[i] = audit.Entry{Seq: from + uint64(i), Data: data, Hashes: []audit.Hash{{}}}
	}
	return out
}

// Once Close has stopped the indexer, nothing would make room in the
// tail for an append waiting for it, and Close would wait for that
// append: so appends are refused from the moment Close begins. Close
// here is held in its last checkpoint by a reader's old snapshot, and
// the appends meanwhile, enough to fill the tail, are refused; Close then
// returns, and every acknowledged record is in the reopened store.
func TestCloseRefusesAppendsItWouldNotIndex(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(ctx, path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, closeTestEntries(t, 0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM audit_records`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, closeTestEntries(t, 10, 10)); err != nil {
		t.Fatal(err)
	}

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	<-s.indexerDone // Close now waits in its FULL checkpoint, for the reader
	if err := s.Append(ctx, closeTestEntries(t, 20, maxTail)); !errors.Is(err, errClosed) {
		t.Fatalf("an append while the store closes: %v, want %v", err, errClosed)
	}
	if err := s.Append(ctx, closeTestEntries(t, 20, 1)); !errors.Is(err, errClosed) {
		t.Fatalf("an append while the store closes: %v, want %v", err, errClosed)
	}
	tx.Rollback()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close has not returned 30 s after the reader let go")
	}

	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if size, err := s.Size(ctx); err != nil || size != 20 {
		t.Fatalf("reopened: size %d, %v; want the 20 records acknowledged", size, err)
	}
}

// Flush and Close may run together: Flush then commits the tail or
// reports the store closed, and never touches what Close has closed —
// here, with each commit asking for a checkpoint, the checkpointer's
// channel.
func TestFlushDuringClose(t *testing.T) {
	defer SetSegmentSize(segmentSize, 1, indexDelay)()
	ctx := context.Background()
	// Few rounds and appends: each commit here is a synced checkpoint,
	// and a storm of syncs would slow the tests running beside this one.
	for range 5 {
		s, err := Open(ctx, filepath.Join(t.TempDir(), "audit.db"), Options{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				for j := 0; ; j++ {
					err := s.Flush(ctx)
					if errors.Is(err, errClosed) {
						return
					}
					if err != nil {
						t.Errorf("flusher %d, flush %d: %v", i, j, err)
						return
					}
				}
			})
		}
		for i := range 10 {
			if err := s.Append(ctx, closeTestEntries(t, uint64(i), 1)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}
