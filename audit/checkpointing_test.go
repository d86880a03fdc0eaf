package audit_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// When a Log signs checkpoints: after every CheckpointEvery records, every
// CheckpointInterval, on Close, and when asked.

// checkpointSizes returns the sizes of the checkpoints s holds, checking
// that each is signed by verifier and commits to the tree s holds.
func checkpointSizes(t *testing.T, s audit.Store, verifier note.Verifier) []uint64 {
	t.Helper()
	ctx := context.Background()
	sizes := []uint64{}
	err := s.Checkpoints(ctx, func(size uint64, signed []byte) error {
		cp, err := audit.OpenCheckpoint(signed, verifier)
		if err != nil {
			t.Errorf("checkpoint of size %d: %v", size, err)
			return nil
		}
		root, err := tlog.TreeHash(int64(size), storeReader{s})
		if err != nil {
			t.Errorf("tlog.TreeHash(%d): %v", size, err)
			return nil
		}
		if cp.Size != size || cp.Root != root {
			t.Errorf("checkpoint stored as size %d = %+v, want root %v", size, cp, root)
		}
		sizes = append(sizes, size)
		return nil
	})
	if err != nil {
		t.Fatalf("Checkpoints: %v", err)
	}
	return sizes
}

type storeReader struct{ s audit.Store }

func (r storeReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return r.s.ReadHashes(context.Background(), indexes)
}

func logEvents(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	for range n {
		if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
}

func TestCheckpointEvery(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointEvery: 5, CheckpointInterval: -1})
	for i := range 23 {
		logEvents(t, l, 1)
		// The checkpoint is stored before the Log call that completes
		// its records returns.
		size, _, err := s.LatestCheckpoint(t.Context())
		if want := uint64((i + 1) / 5 * 5); err != nil || size != want {
			t.Fatalf("after %d records: LatestCheckpoint size = %d, %v; want %d", i+1, size, err, want)
		}
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{5, 10, 15, 20}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes = %v, want %v", got, want)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{5, 10, 15, 20, 23}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes after Close = %v, want %v", got, want)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := checkpointSizes(t, s, verifier); len(got) != 5 {
		t.Errorf("checkpoint sizes after a second Close = %v, want no new one", got)
	}
}

func TestCheckpointOnClose(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: -1})
	logEvents(t, l, 3)
	if got := checkpointSizes(t, s, verifier); len(got) != 0 {
		t.Errorf("checkpoint sizes before Close = %v, want none", got)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{3}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes after Close = %v, want %v", got, want)
	}

	// A log whose records are all covered signs nothing more on Close.
	l = newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: -1})
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{3}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes after reopening and closing = %v, want %v", got, want)
	}
}

func TestCheckpointInterval(t *testing.T) {
	const interval = 20 * time.Millisecond
	signer, verifier := newKey(t, "cp.test")
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: interval})

	// waitFor waits until the latest checkpoint covers size records.
	waitFor := func(size uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, _, err := s.LatestCheckpoint(t.Context())
			if err != nil {
				t.Fatalf("LatestCheckpoint: %v", err)
			}
			if got == size {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint of size %d after 10s with CheckpointInterval %v; latest has size %d", size, interval, got)
			}
			time.Sleep(interval / 4)
		}
	}
	logEvents(t, l, 3)
	waitFor(3)
	logEvents(t, l, 2)
	waitFor(5)

	// Without new records, the timer signs nothing new.
	before := checkpointSizes(t, s, verifier)
	time.Sleep(5 * interval)
	if after := checkpointSizes(t, s, verifier); !slices.Equal(after, before) {
		t.Errorf("checkpoint sizes went from %v to %v without new records", before, after)
	}
	if err := l.Err(); err != nil {
		t.Errorf("Err = %v, want nil", err)
	}
}

// Checkpoints signed by the timer, by CheckpointEvery and by Checkpoint
// at once, under concurrent appends, all land in order and verify.
func TestCheckpointConcurrent(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointEvery: 3, CheckpointInterval: time.Millisecond})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 50 {
				if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
					t.Errorf("Log: %v", err)
					return
				}
				if i%10 == 0 {
					if _, err := l.Checkpoint(t.Context()); err != nil {
						t.Errorf("Checkpoint: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	sizes := checkpointSizes(t, s, verifier)
	if len(sizes) == 0 || sizes[len(sizes)-1] != 400 {
		t.Errorf("checkpoint sizes = %v, want the last to cover all 400 records", sizes)
	}
	res, err := audit.Verify(t.Context(), s, audit.VerifyOptions{Verifier: verifier})
	if err != nil || res.Records != 400 || res.Checkpoints != len(sizes) {
		t.Errorf("Verify = %+v, %v; want 400 records and %d checkpoints", res, err, len(sizes))
	}
}

func TestCheckpointFile(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	dir := t.TempDir()
	file := filepath.Join(dir, "checkpoint")
	// An older file is replaced.
	if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointEvery: 4, CheckpointInterval: -1, CheckpointFile: file})

	wantFile := func(size uint64) {
		t.Helper()
		gotSize, latest, err := s.LatestCheckpoint(t.Context())
		if err != nil || gotSize != size {
			t.Fatalf("LatestCheckpoint = %d, %v; want size %d", gotSize, err, size)
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("reading the checkpoint file: %v", err)
		}
		if !bytes.Equal(got, latest) {
			t.Errorf("checkpoint file holds %q, want the latest stored checkpoint %q", got, latest)
		}
		// Nothing is left beside it.
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("directory of the checkpoint file holds %v, want only the file", names)
		}
	}
	logEvents(t, l, 4)
	wantFile(4)
	logEvents(t, l, 5)
	wantFile(8)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantFile(9)

	// The file is a trusted checkpoint for Verify.
	kept, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(t.Context(), s, audit.VerifyOptions{Verifier: verifier, Trusted: [][]byte{kept}}); err != nil {
		t.Errorf("Verify with the checkpoint file as trusted: %v", err)
	}
}

func TestCheckpointFileFailure(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	dir := filepath.Join(t.TempDir(), "anchor")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "checkpoint")
	l := newLog(t, audit.NewMemoryStore(), audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: -1, CheckpointFile: file})
	logEvents(t, l, 1)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(t.Context()); !errors.Is(err, audit.ErrUnavailable) {
		t.Errorf("Checkpoint with an unwritable file: got error %v, want %v", err, audit.ErrUnavailable)
	}
	if err := l.Err(); !errors.Is(err, audit.ErrUnavailable) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Err after the checkpoint file failed = %v, want %v naming %s", err, audit.ErrUnavailable, dir)
	}
}

func TestCheckpointNow(t *testing.T) {
	signer, verifier := newKey(t, "cp.test")
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointInterval: -1})
	logEvents(t, l, 7)
	signed, err := l.Checkpoint(t.Context())
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	size, root := l.Root()
	cp, err := audit.OpenCheckpoint(signed, verifier)
	if err != nil {
		t.Fatalf("OpenCheckpoint(Checkpoint()): %v", err)
	}
	if want := (audit.Checkpoint{Origin: "cp.test", Size: size, Root: root}); cp != want {
		t.Errorf("Checkpoint() = %+v, want %+v", cp, want)
	}
	if _, latest, _ := s.LatestCheckpoint(t.Context()); !bytes.Equal(latest, signed) {
		t.Errorf("Checkpoint returned %q, but the latest stored is %q", signed, latest)
	}
	// Nothing new: the same checkpoint, and no other stored.
	again, err := l.Checkpoint(t.Context())
	if err != nil || !bytes.Equal(again, signed) {
		t.Errorf("second Checkpoint = %q, %v; want %q", again, err, signed)
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{7}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes = %v, want %v", got, want)
	}
}

func TestCheckpointWithoutSigner(t *testing.T) {
	s := audit.NewMemoryStore()
	l := newLog(t, s, audit.Options{})
	logEvents(t, l, 2)
	if signed, err := l.Checkpoint(t.Context()); err == nil {
		t.Errorf("Checkpoint without a signer = %q, nil error; want error", signed)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if size, signed, err := s.LatestCheckpoint(t.Context()); signed != nil || err != nil {
		t.Errorf("LatestCheckpoint of a log without a signer = %d, %q, %v; want none", size, signed, err)
	}
}

func TestCheckpointStoreFailure(t *testing.T) {
	errStore := errors.New("checkpoint table full")
	signer, verifier := newKey(t, "cp.test")
	s := &faultyStore{Store: audit.NewMemoryStore()}
	l := newLog(t, s, audit.Options{Signer: signer, Verifier: verifier, CheckpointEvery: 2, CheckpointInterval: -1})
	logEvents(t, l, 1)
	s.failCheckpoints(errStore)

	// The record that makes a checkpoint due is stored, but the log is
	// failed: a record that can't be anchored is not safely recorded.
	_, _ = l.Log(t.Context(), audit.Record{Event: "e"})
	if err := l.Err(); !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errStore) {
		t.Errorf("Err after AddCheckpoint failed = %v, want one matching %v and %v", err, audit.ErrUnavailable, errStore)
	}
	if _, err := l.Checkpoint(t.Context()); !errors.Is(err, audit.ErrUnavailable) || !errors.Is(err, errStore) {
		t.Errorf("Checkpoint with AddCheckpoint failing: got error %v, want one matching %v and %v", err, audit.ErrUnavailable, errStore)
	}

	s.failCheckpoints(nil)
	logEvents(t, l, 1)
	if err := l.Err(); err != nil {
		t.Errorf("Err after the store recovered = %v, want nil", err)
	}
	if got, want := checkpointSizes(t, s, verifier), []uint64{3}; !slices.Equal(got, want) {
		t.Errorf("checkpoint sizes after the store recovered = %v, want %v", got, want)
	}

	s.failCheckpoints(errStore)
	if _, err := l.Log(t.Context(), audit.Record{Event: "e"}); err != nil {
		t.Fatalf("Log: %v", err) // 4 records, the last checkpoint at 3: none due
	}
	if err := l.Close(); !errors.Is(err, errStore) {
		t.Errorf("Close with AddCheckpoint failing: got error %v, want %v", err, errStore)
	}
}

// A checkpoint directory keeps every checkpoint, by size, and the latest.
func TestCheckpointDirectory(t *testing.T) {
	skey, _, err := audit.GenerateKey("dir-test")
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx := context.Background()
	l := newLog(t, audit.NewMemoryStore(), audit.Options{Signer: signer, Verifier: verifier,
		CheckpointEvery: 3, CheckpointInterval: -1, CheckpointFile: dir})
	for range 7 {
		if _, err := l.Log(ctx, audit.Record{Event: "e"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, size := range []uint64{3, 6, 7} {
		signed, err := os.ReadFile(filepath.Join(dir, strconv.FormatUint(size, 10)))
		if err != nil {
			t.Fatalf("checkpoint of size %d not in the directory: %v", size, err)
		}
		cp, err := audit.OpenCheckpoint(signed, verifier)
		if err != nil || cp.Size != size {
			t.Errorf("file %d holds checkpoint %+v, %v", size, cp, err)
		}
	}
	latest, err := os.ReadFile(filepath.Join(dir, "latest"))
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := audit.OpenCheckpoint(latest, verifier); err != nil || cp.Size != 7 {
		t.Errorf("latest = %+v, %v; want size 7", cp, err)
	}
}
