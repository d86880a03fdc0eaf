package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// A busy log waits gatherSyncs syncs' time for its batch to gather, up
// to gatherMax, and not at all where syncs are too quick to matter.
func TestGatherWait(t *testing.T) {
	for _, c := range []struct{ sync, want time.Duration }{
		{0, 0},
		{2 * time.Microsecond, 0}, // tmpfs
		{gatherMin/gatherSyncs - 1, 0},
		{gatherMin / gatherSyncs, gatherMin},
		{50 * time.Microsecond, 400 * time.Microsecond}, // a fast SSD
		{250 * time.Microsecond, gatherMax},
		{40 * time.Millisecond, gatherMax}, // a stalled disk
	} {
		if got := gatherWait(c.sync); got != c.want {
			t.Errorf("gatherWait(%v) = %v, want %v", c.sync, got, c.want)
		}
	}
}

// The moving average starts at the first measure and follows a change
// within a few dozen.
func TestMovingAverage(t *testing.T) {
	avg := movingAverage(0, time.Millisecond)
	if avg != time.Millisecond {
		t.Fatalf("first measure 1ms: average %v", avg)
	}
	for range 40 {
		avg = movingAverage(avg, 50*time.Microsecond)
	}
	if avg < 50*time.Microsecond || avg > 55*time.Microsecond {
		t.Errorf("after 40 measures of 50µs the average is %v", avg)
	}
	if got := movingAverage(avg, 5*time.Millisecond); got <= avg || got > avg+time.Millisecond {
		t.Errorf("one slow sync moved the average from %v to %v", avg, got)
	}
}

// GatherAppends follows the record log's syncs: nothing before the
// first, then what gatherWait makes of their average.
func TestGatherAppendsFollowsSyncs(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(ctx, path, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if w := s.GatherAppends(); w != 0 {
		t.Errorf("before any append GatherAppends = %v, want 0", w)
	}
	l := logRecords(t, s, 20)
	took := time.Duration(s.rlog.syncTook.Load())
	if took <= 0 {
		t.Fatalf("after 20 appends the average sync is %v", took)
	}
	if w, want := s.GatherAppends(), gatherWait(took); w != want {
		t.Errorf("GatherAppends = %v, want %v for syncs of %v", w, want, took)
	}
	t.Logf("syncs of %v here: a busy log waits %v", took, s.GatherAppends())
	// A reader beside it has no record log to time, and appends nothing.
	ro, err := Open(ctx, path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if w := ro.GatherAppends(); w != 0 {
		t.Errorf("a read-only store's GatherAppends = %v, want 0", w)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
