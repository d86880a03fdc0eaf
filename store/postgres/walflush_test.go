package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/internal/pgtest"
	"github.com/agentsec/agentsec/store/postgres"
	"github.com/agentsec/agentsec/trust"
)

// BenchmarkGovernedCallWALFlushes measures what a governed call costs the
// PostgreSQL server's WAL: a full Stack over the PostgreSQL budget and
// audit stores runs b.N calls of a no-op tool with Guard, from 1 and from
// 64 callers, each on a session of its own, and the benchmark reports the
// growth of pg_stat_wal over those calls, per call: "wal-syncs/call" (WAL
// flushes to stable storage, the fdatasyncs a commit waits for),
// "wal-writes/call", "wal-records/call" and "wal-bytes/call"; and
// "commits/call", the transaction ids assigned meanwhile: each writing
// transaction takes one, and with synchronous_commit on its commit waits
// for the WAL to be flushed up to its commit record — by its own flush,
// or by a flush another process made after the record was inserted, which
// is how concurrent commits share one. (Read-only transactions, such as the
// ones in which pgx prepares a connection's statements, take none and
// flush nothing.)
//
// pg_stat_wal is cluster-wide: it counts the flushes of every process,
// the WAL writer's and checkpointer's as well as the backends', so the
// figures are the server's whole WAL cost of the calls, on a server that
// does nothing else (the one pgtest starts; a server given by
// AGENTSEC_TEST_POSTGRES must be idle for them to mean anything).
//
// Backends don't publish their counts as they go: in PostgreSQL 15 a
// backend adds its pending statistics to the shared ones when it goes
// idle if it has not done so in the last second, else once it has been
// idle for up to 10s, and always when it exits (pgstat_report_stat). pg_stat_force_next_flush() only speeds up
// the backend that calls it, and pg_stat_clear_snapshot() only refreshes
// the reader's view. So each reading is taken with none of the benchmark
// database's backends left, every one of them having flushed on exit: the
// Stack's pool closes connections idle for a second (after the warm-up)
// or is closed (after the timed calls), and the reading waits for
// pg_stat_activity to show no client backend on the database. The WAL
// writer publishes its counts on each of its rounds, so the reading is
// then repeated, wal_writer_delay and more apart, until it stops
// changing. Each reading is a statement of its own, so a new transaction,
// whose statistics snapshot is taken afresh. What remains in the window
// besides the calls is the connections' setup, which writes no WAL, and
// whatever autovacuum or a timed checkpoint happen to do meanwhile.
func BenchmarkGovernedCallWALFlushes(b *testing.B) {
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			benchWALFlushes(b, callers)
		})
	}
}

func benchWALFlushes(b *testing.B, callers int) {
	b.StopTimer()
	flushes := governedCallFlushes(b, callers, b.N, b.StartTimer)
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(flushes.syncs)/n, "wal-syncs/call")
	b.ReportMetric(float64(flushes.writes)/n, "wal-writes/call")
	b.ReportMetric(float64(flushes.records)/n, "wal-records/call")
	b.ReportMetric(float64(flushes.bytes)/n, "wal-bytes/call")
	b.ReportMetric(float64(flushes.xids)/n, "commits/call")
}

// TestGovernedCallFlushesTwice holds a lone caller's governed call to two
// WAL flushes: its reservation's, durable before the tool runs, and its
// record's, durable before the answer, which takes the call's token count
// with it (budget.LazyCommitter). Each on its own, they were three.
func TestGovernedCallFlushesTwice(t *testing.T) {
	const calls = 300
	flushes := governedCallFlushes(t, 1, calls, func() {})
	if perCall := float64(flushes.syncs) / calls; perCall > 2.1 {
		t.Errorf("%d WAL flushes for %d governed calls from one caller: %.2f a call, want 2", flushes.syncs, calls, perCall)
	}
	if perCall := float64(flushes.xids) / calls; perCall < 2.9 {
		t.Errorf("%d commits for %d calls: %.2f a call, want 3 (reservation, count, record)", flushes.xids, calls, perCall)
	}
}

// governedCallFlushes makes n governed calls from callers goroutines, each
// on a session of its own, through a Stack over the PostgreSQL budget and
// audit stores, and returns the growth of the WAL statistics over them.
// start is called when the measured calls begin.
func governedCallFlushes(b testing.TB, callers, n int, start func()) walStats {
	ctx := context.Background()
	dsn := pgtest.DB(b)
	if _, _, err := postgres.Migrate(ctx, dsn); err != nil {
		b.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	// The readings are taken from the maintenance database, where the
	// benchmark's backends are not.
	mon, err := pgx.Connect(ctx, pgtest.Shared(b).DSN)
	if err != nil {
		b.Fatal(err)
	}
	defer mon.Close(ctx)
	w := &walWatch{b: b, conn: mon, db: cfg.Database}
	if err := mon.QueryRow(ctx, `SELECT setting::bigint FROM pg_settings WHERE name = 'wal_writer_delay'`).Scan(&w.writerDelayMS); err != nil {
		b.Fatal(err)
	}

	db, err := postgres.Open(ctx, withPoolParams(dsn, map[string]string{
		"pool_max_conn_idle_time":  "1s",
		"pool_health_check_period": "100ms",
	}))
	if err != nil {
		b.Fatal(err)
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			ToolName: "noop", RequiredLevel: "verified",
			Agents: []trust.Assignment{{Agent: "agent", Level: "verified"}},
		},
		// Limits no benchmark reaches.
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62, Store: db.Budgets()},
		AuditNamespace: "walbench",
		Audit:          agentsec.AuditConfig{Store: db.Audit()},
	})
	db.Close() // the stores hold the pool
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stack.Close() })

	reqs := make([]agentsec.Request, callers)
	for i := range reqs {
		reqs[i] = agentsec.Request{Agent: "agent", Session: fmt.Sprint("walbench-", i), Tool: "noop"}
	}
	tool := func(context.Context) (int64, error) { return 42, nil }
	// The warm-up creates each caller's session, outside the window.
	guardCalls(b, stack, reqs, len(reqs), tool)
	before := w.settled()

	start()
	guardCalls(b, stack, reqs, n, tool)

	// Every call is recorded: the assignment, the warm-up's and the timed.
	if got, want := stack.Audit.Size(), uint64(1+len(reqs)+n); got != want {
		b.Fatalf("the audit log holds %d records, want %d", got, want)
	}
	if err := stack.Close(); err != nil {
		b.Fatal(err)
	}
	after := w.settled()
	return walStats{records: after.records - before.records, fpi: after.fpi - before.fpi, bytes: after.bytes - before.bytes,
		buffersFull: after.buffersFull - before.buffersFull, writes: after.writes - before.writes,
		syncs: after.syncs - before.syncs, xids: after.xids - before.xids}
}

// guardCalls makes n governed calls in all, from one goroutine per
// request, each on its own request (and session).
func guardCalls(b testing.TB, stack *agentsec.Stack, reqs []agentsec.Request, n int, tool agentsec.ToolFunc) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, req := range reqs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := stack.Guard(ctx, req, tool); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

// withPoolParams adds pgxpool settings to a connection string, in its
// URL or key=value form.
func withPoolParams(dsn string, params map[string]string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		q := u.Query()
		for k, v := range params {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	for k, v := range params {
		dsn += " " + k + "=" + v
	}
	return dsn
}

// walStats is a reading of pg_stat_wal, and of the next transaction id.
type walStats struct {
	records, fpi, bytes, buffersFull, writes, syncs, xids int64
}

// A walWatch reads a server's WAL statistics for a database's benchmark.
type walWatch struct {
	b             testing.TB
	conn          *pgx.Conn // on another database
	db            string    // the benchmark's database
	writerDelayMS int64     // wal_writer_delay
}

// settled returns the statistics once every client backend on the
// database has exited — each flushes its pending statistics as it exits —
// and two readings a WAL writer's round and more apart agree.
func (w *walWatch) settled() walStats {
	w.b.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(30 * time.Second); ; {
		var n int
		if err := w.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND backend_type = 'client backend'`, w.db).Scan(&n); err != nil {
			w.b.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			w.b.Fatalf("%d client backends still on database %s after 30s", n, w.db)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pause := time.Duration(2*w.writerDelayMS+50) * time.Millisecond
	prev := w.read()
	for range 20 {
		time.Sleep(pause)
		cur := w.read()
		if cur == prev {
			return cur
		}
		prev = cur
	}
	w.b.Logf("pg_stat_wal still changing after %v: some other activity on the server is counted", 20*pause)
	return prev
}

func (w *walWatch) read() walStats {
	w.b.Helper()
	var s walStats
	err := w.conn.QueryRow(context.Background(), `SELECT wal_records, wal_fpi, wal_bytes::bigint, wal_buffers_full,
			wal_write, wal_sync, pg_snapshot_xmax(pg_current_snapshot())::text::bigint
		FROM pg_stat_wal`).Scan(&s.records, &s.fpi, &s.bytes, &s.buffersFull, &s.writes, &s.syncs, &s.xids)
	if err != nil {
		w.b.Fatal(err)
	}
	return s
}
