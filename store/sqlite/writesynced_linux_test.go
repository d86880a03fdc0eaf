package sqlite

import (
	"bytes"
	"github.com/agentsec/agentsec/audit/audittest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestWriteSynced writes at offsets inside a file and past its end, with
// one pwritev2 and with the two calls it falls back to, and reads back
// what each wrote.
func TestWriteSynced(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		restore := noDsyncWrites.Load()
		noDsyncWrites.Store(fallback)
		f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 10000)
		for i, at := range []int64{0, 4000, 100, 9000} { // the last one grows the file
			b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
			if err := writeSynced(f, b, at); err != nil {
				t.Fatalf("fallback %v: writeSynced at %d: %v", fallback, at, err)
			}
			copy(want[at:], b)
		}
		got, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("fallback %v: the file holds %q…, want %q…", fallback, got[:20], want[:20])
		}
		f.Close()
		noDsyncWrites.Store(restore)
	}
}

// TestWriteSyncedFails reports a write the kernel refuses, and does not
// take the refusal for a missing pwritev2.
func TestWriteSyncedFails(t *testing.T) {
	name := filepath.Join(t.TempDir(), "seg")
	if err := os.WriteFile(name, make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name) // read-only
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = writeSynced(f, []byte("frame"), 0)
	if pe, ok := err.(*os.PathError); !ok || pe.Err != syscall.EBADF {
		t.Errorf("writeSynced to a read-only file = %v, want EBADF", err)
	}
	if noDsyncWrites.Load() {
		t.Error("a refused write turned off pwritev2")
	}
}

// BenchmarkWriteSynced writes and syncs 1 KiB frames one after another in
// a file written ahead, as the record log does, with writeSynced's one
// pwritev2 and with a pwrite then an fdatasync, alternately, and reports
// the median of each and their ratio: on tmpfs (/dev/shm), where the
// sync costs nothing and the system calls are the cost, and on the disk
// of the test's temporary directory.
func BenchmarkWriteSynced(b *testing.B) {
	dirs := map[string]string{"tmpfs": "/dev/shm", "disk": ""}
	for _, name := range []string{"tmpfs", "disk"} {
		b.Run(name, func(b *testing.B) {
			dir := dirs[name]
			var st syscall.Statfs_t
			if dir == "" {
				dir = b.TempDir()
			} else if syscall.Statfs(dir, &st) != nil || st.Type != 0x01021994 {
				b.Skipf("%s is not on tmpfs here", dir)
			}
			f, err := os.CreateTemp(dir, "agentsec-bench-")
			if err != nil {
				b.Fatal(err)
			}
			defer os.Remove(f.Name())
			defer f.Close()
			const ahead = 64 << 20
			if err := writeThenSync(f, make([]byte, ahead), 0); err != nil {
				b.Fatal(err)
			}
			frame := bytes.Repeat([]byte{1}, 1024)
			var one, two []time.Duration
			off := int64(0)
			for i := 0; b.Loop(); i++ {
				if off+int64(len(frame)) > ahead {
					off = 0
				}
				start := time.Now()
				if i%2 == 0 {
					err = writeSynced(f, frame, off)
					one = append(one, time.Since(start))
				} else {
					err = writeThenSync(f, frame, off)
					two = append(two, time.Since(start))
				}
				if err != nil {
					b.Fatal(err)
				}
				off += int64(len(frame))
			}
			if len(one) == 0 || len(two) == 0 {
				return
			}
			m1, m2 := audittest.Median(one), audittest.Median(two)
			b.ReportMetric(float64(m1.Nanoseconds()), "ns-pwritev2")
			b.ReportMetric(float64(m2.Nanoseconds()), "ns-pwrite+fdatasync")
			b.ReportMetric(float64(m1)/float64(m2), "pwritev2/pair")
		})
	}
}
