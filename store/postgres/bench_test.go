package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/store/postgres"
)

// medianExec is the median time of running stmt n times on a
// connection of its own to dsn, after setup.
func medianExec(b *testing.B, dsn string, n int, setup, stmt string) time.Duration {
	b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if setup != "" {
		if _, err := conn.Exec(ctx, setup); err != nil {
			b.Fatal(err)
		}
	}
	ds := make([]time.Duration, n)
	for i := range ds {
		t0 := time.Now()
		if _, err := conn.Exec(ctx, stmt); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(t0)
	}
	return audittest.Median(ds)
}

// BenchmarkReserve takes call slots of one session, one at a time, and
// reports the median reservation against the median SELECT 1 round trip
// and the median durable write, measured on the same server just before:
// "RTT/op" and "writes/op" are the ratios.
func BenchmarkReserve(b *testing.B) {
	dsn, db := migratedDSN(b)
	ctx := context.Background()
	s := db.Budgets()
	defer s.Close()
	if _, err := s.Create(ctx, "bench", budget.Limits{Tokens: 1 << 62, Calls: 1 << 62}); err != nil {
		b.Fatal(err)
	}
	// The baselines: a round trip, and the least durable write there is,
	// one committed one-row UPDATE, which waits for the server's WAL to
	// reach stable storage.
	rtt := medianExec(b, dsn, max(b.N, 1000), "", `SELECT 1`)
	commit := medianExec(b, dsn, max(b.N, 1000),
		`CREATE TABLE bench_write (n bigint); INSERT INTO bench_write VALUES (0)`, `UPDATE bench_write SET n = n + 1`)
	ds := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if _, err := s.Reserve(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(t0)
	}
	b.StopTimer()
	m := audittest.Median(ds)
	b.ReportMetric(float64(rtt.Microseconds()), "select1-p50-µs")
	b.ReportMetric(float64(commit.Microseconds()), "write-p50-µs")
	b.ReportMetric(float64(m)/float64(commit), "writes/op")
	b.ReportMetric(float64(m.Microseconds()), "reserve-p50-µs")
	b.ReportMetric(float64(m)/float64(rtt), "RTT/op")
}

// BenchmarkReserveParallel makes budget changes from 64 goroutines, each
// on a session of its own: reservations alone, and the reservation and
// token commit of a call that ran. Each is measured batched, as the store
// makes them, and unbatched (every change on its own statement); and
// against SELECT 1s per second from 64 goroutines over a pool of the
// store's size, measured on the same server just before. "RTT/op" is what
// an operation costs in those round trips, "x-unbatched" how many times
// the unbatched rate the batched one is.
func BenchmarkReserveParallel(b *testing.B) {
	dsn, _ := migratedDSN(b)
	ctx := context.Background()
	const workers = 64
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = postgres.DefaultMaxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	for _, bb := range []struct {
		name string
		op   func(s *postgres.BudgetStore, session string) error
	}{
		{"reserve", func(s *postgres.BudgetStore, session string) error {
			_, err := s.Reserve(ctx, session)
			return err
		}},
		{"reserve+commit", func(s *postgres.BudgetStore, session string) error {
			if _, err := s.Reserve(ctx, session); err != nil {
				return err
			}
			return s.Commit(ctx, session, 100)
		}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			store := func(unbatched bool) (*postgres.BudgetStore, []string) {
				db, err := postgres.Open(ctx, dsn)
				if err != nil {
					b.Fatal(err)
				}
				s := db.Budgets()
				db.Close()
				b.Cleanup(func() { s.Close() })
				if unbatched {
					s.Unbatched()
				}
				sessions := make([]string, workers)
				for w := range sessions {
					sessions[w] = fmt.Sprint(bb.name, "-", unbatched, "-", w)
					if _, err := s.Create(ctx, sessions[w], budget.Limits{Tokens: 1 << 62, Calls: 1 << 62}); err != nil {
						b.Fatal(err)
					}
				}
				return s, sessions
			}
			batched, sessions := store(false)
			alone, aloneSessions := store(true)
			n := max(b.N, 5000)
			selects := parallelRate(b, workers, n, func(int) error {
				var one int
				return pool.QueryRow(ctx, `SELECT 1`).Scan(&one)
			})
			unbatched := parallelRate(b, workers, n, func(w int) error { return bb.op(alone, aloneSessions[w]) })
			b.ResetTimer()
			rate := parallelRate(b, workers, b.N, func(w int) error { return bb.op(batched, sessions[w]) })
			b.StopTimer()
			b.ReportMetric(selects, "select1/s")
			b.ReportMetric(unbatched, "unbatched-ops/s")
			b.ReportMetric(rate, "ops/s")
			b.ReportMetric(selects/rate, "RTT/op")
			b.ReportMetric(rate/unbatched, "x-unbatched")
		})
	}
}

// parallelRate runs op n times in all from workers goroutines, each
// passing op its number, and returns ops per second.
func parallelRate(b *testing.B, workers, n int, op func(w int) error) float64 {
	b.Helper()
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := op(w); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkAuditAppend appends to an audit.Log over the PostgreSQL store
// from 1 and 256 goroutines, every append returning once it is committed,
// and reports appends per second.
func BenchmarkAuditAppend(b *testing.B) {
	for _, writers := range []int{1, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			l, err := audit.NewLog(context.Background(), migrated(b).Audit(), audit.Options{Namespace: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			audittest.BenchAppend(b, l, writers)
		})
	}
}
