package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/store/sqlite"
)

func TestStoreConformance(t *testing.T) {
	audittest.Run(t, func(t *testing.T) audit.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"), sqlite.Options{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	})
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 500)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		opts sqlite.Options
		want string
	}{
		{"missing file", filepath.Join(dir, "nope.db"), sqlite.Options{}, "no database at"},
		{"missing file read-only", filepath.Join(dir, "nope.db"), sqlite.Options{ReadOnly: true, Create: true}, "no database at"},
		{"not a database", garbage, sqlite.Options{}, "not an agentsec database"},
		{"empty path", "", sqlite.Options{Create: true}, "empty database path"},
		{"missing directory", filepath.Join(dir, "nope", "audit.db"), sqlite.Options{Create: true}, "the directory of " + filepath.Join(dir, "nope", "audit.db") + " does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := sqlite.Open(ctx, tt.path, tt.opts)
			if err == nil {
				st.Close()
				t.Fatalf("Open succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// A read-only store refuses to append, and reads while a writer appends.
func TestReadOnlyAlongsideWriter(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	w, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l, err := audit.NewLog(ctx, w, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := l.Log(ctx, audit.Record{Event: "e"}); err != nil {
			t.Fatal(err)
		}
	}
	// Other processes see appends once the writer commits them to the
	// database, within moments; Flush does it at once.
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := sqlite.Open(ctx, path, sqlite.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, err := r.Size(ctx); err != nil || n != 10 {
		t.Fatalf("read-only Size = %d, %v; want 10", n, err)
	}
	if err := r.Append(ctx, nil); err == nil {
		t.Log("empty append on a read-only store is a no-op")
	}
	if err := r.AddCheckpoint(ctx, 1, []byte("x")); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("AddCheckpoint on a read-only store = %v, want a read-only error", err)
	}
	if _, err := l.Log(ctx, audit.Record{Event: "e"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Size(ctx); n != 11 {
		t.Errorf("reader sees %d records after the writer's 11th, want 11", n)
	}
}

// Appended records wait in the tail until the indexer commits them to the
// database; queries see them all the same, and records a crash left only
// in the record log are replayed, with their index rows, by the next Open.
func TestQueriesSeeTheTailAndItsReplay(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	w, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, w, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, err := l.Log(ctx, audit.Record{Event: "e", Session: []string{"a", "b"}[i%2]}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(st *sqlite.Store) int {
		t.Helper()
		n, cursor := 0, ""
		for {
			page, err := audit.Query(ctx, st, audit.Filter{Session: "b", Limit: 7, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			n += len(page.Records)
			if cursor = page.Next; cursor == "" {
				return n
			}
		}
	}
	if n := count(w); n != 50 {
		t.Errorf("query while records wait in the tail found %d of session b's 50", n)
	}
	// A restart after a crash: the tail never reached the database.
	sqlite.Abandon(w)
	again, err := sqlite.Open(ctx, path, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if n := count(again); n != 50 {
		t.Errorf("after the replay, query found %d of 50", n)
	}
}
