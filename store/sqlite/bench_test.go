package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/store/sqlite"
)

// BenchmarkBaselineFdatasync writes 4 KiB and calls fdatasync, in the
// directory the other benchmarks keep their databases in: the cost of
// making one thing durable on this machine.
func BenchmarkBaselineFdatasync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	lat := make([]time.Duration, 0, 1024)
	for b.Loop() {
		start := time.Now()
		if _, err := f.WriteAt(page, 0); err != nil {
			b.Fatal(err)
		}
		if err := fdatasync(f); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	audittest.ReportP50(b, lat)
}

func benchLog(b *testing.B) (*audit.Log, *sqlite.Store) {
	b.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	skey, _, _ := audit.GenerateKey("bench")
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		b.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "bench", Signer: signer, Verifier: verifier})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l, st
}

// BenchmarkDurableAppend appends to a SQLite log from 1, 16 and 256
// goroutines; every append returns only once its record is on stable
// storage. It reports appends per second and, for one writer, the median
// time of one append.
func BenchmarkDurableAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			l, _ := benchLog(b)
			audittest.BenchAppend(b, l, writers)
		})
	}
}

// BenchmarkVerify verifies a 200,000-record SQLite log from its stored
// bytes and reports records per second.
func BenchmarkVerify(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a 200,000-record log first; run without -short")
	}
	const n = 200_000
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	audittest.Fill(b, st, n, 1000, "bench")
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		res, err := audit.Verify(ctx, st, audit.VerifyOptions{})
		if err != nil || res.Records != n {
			b.Fatal(res.Records, err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/time.Since(start).Seconds(), "records/s")
}

// BenchmarkSessionQuery asks for the first page (100 records) of one
// session in a 1,000,000-record SQLite log of 10,000 sessions.
func BenchmarkSessionQuery(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a 1,000,000-record log first; run without -short")
	}
	const n = 1_000_000
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	audittest.Fill(b, st, n, 10_000, "bench")
	i := 0
	lat := make([]time.Duration, 0, 1024)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		page, err := audit.Query(ctx, st, audit.Filter{Session: fmt.Sprintf("session-%d", i%10_000), Limit: 100})
		if err != nil || len(page.Records) != 100 {
			b.Fatal(len(page.Records), err)
		}
		lat = append(lat, time.Since(t0))
		i += 7
	}
	audittest.ReportP50(b, lat)
}
