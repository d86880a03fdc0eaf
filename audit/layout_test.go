package audit

import (
	"math"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

func TestPackHashes(t *testing.T) {
	hs := []Hash{{1}, {2}, {3}}
	raw := PackHashes(hs)
	var buf [MaxStoredHashes]Hash
	got, err := UnpackHashes(raw, &buf)
	if err != nil || len(got) != 3 || got[0] != hs[0] || got[2] != hs[2] {
		t.Fatalf("UnpackHashes(PackHashes) = %v, %v", got, err)
	}
	if h, ok := HashAt(raw, 1); !ok || h != hs[1] {
		t.Errorf("HashAt(1) = %v, %v", h, ok)
	}
	if _, ok := HashAt(raw, 3); ok {
		t.Error("HashAt past the last level found a hash")
	}
	for _, bad := range [][]byte{raw[:40], make([]byte, 32*(MaxStoredHashes+1))} {
		if _, err := UnpackHashes(bad, &buf); err == nil {
			t.Errorf("UnpackHashes of %d bytes: no error", len(bad))
		}
	}
}

// HashHolder inverts what an entry stores: entry n holds the hashes
// tlog.StoredHashes adds for record n, lowest level first.
func TestHashHolder(t *testing.T) {
	for n := int64(0); n < 300; n++ {
		first := tlog.StoredHashIndex(0, n)
		count := tlog.StoredHashCount(n+1) - first
		for level := range count {
			seq, lvl, err := HashHolder(first + level)
			if err != nil || seq != n || lvl != int(level) {
				t.Fatalf("HashHolder(%d) = %d, %d, %v; want record %d, level %d", first+level, seq, lvl, err, n, level)
			}
		}
	}
	if _, _, err := HashHolder(-1); err == nil {
		t.Error("HashHolder(-1): no error")
	}
}

// Indexes near the largest int64 come only from a damaged size: the ones
// a log of MaxLogSize records holds are split, and beyond them is an
// error, at once — tlog's split of the largest int64 would never end.
func TestHashHolderBounds(t *testing.T) {
	last := int64(MaxLogSize - 1)
	first := tlog.StoredHashIndex(0, last)
	for level := range tlog.StoredHashCount(MaxLogSize) - first {
		if seq, lvl, err := HashHolder(first + level); err != nil || seq != last || lvl != int(level) {
			t.Errorf("HashHolder(%d) = %d, %d, %v; want the last record of the largest log, level %d", first+level, seq, lvl, err, level)
		}
	}
	done := make(chan error, 1)
	go func() { _, _, err := HashHolder(math.MaxInt64); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("HashHolder(MaxInt64): no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("HashHolder(MaxInt64) did not return")
	}
}

func TestUntilMicro(t *testing.T) {
	at := time.Unix(100, 5000) // 5 µs exactly
	if got := (Filter{Until: at}).UntilMicro(); got != at.UnixMicro() {
		t.Errorf("UntilMicro on a whole microsecond = %d, want %d", got, at.UnixMicro())
	}
	if got := (Filter{Until: at.Add(1)}).UntilMicro(); got != at.UnixMicro()+1 {
		t.Errorf("UntilMicro 1 ns past a microsecond = %d, want %d", got, at.UnixMicro()+1)
	}
}

// Stored hashes come from a store an outsider may have written: any bytes
// either split into whole hashes that pack back to them, or fail.
func FuzzUnpackHashes(f *testing.F) {
	f.Add(PackHashes([]Hash{{1}, {2}}))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var buf [MaxStoredHashes]Hash
		hs, err := UnpackHashes(raw, &buf)
		if err != nil {
			return
		}
		if string(PackHashes(hs)) != string(raw) {
			t.Fatalf("PackHashes(UnpackHashes(%x)) differs", raw)
		}
	})
}
