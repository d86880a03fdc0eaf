package postgres_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/budget/budgettest"
	"github.com/agentsec/agentsec/internal/pgtest"
	"github.com/agentsec/agentsec/store/postgres"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// migrated returns an open DB on a new, migrated database.
func migrated(tb testing.TB) *postgres.DB {
	tb.Helper()
	_, db := migratedDSN(tb)
	return db
}

// migratedDSN is migrated, with the database's connection string.
func migratedDSN(tb testing.TB) (string, *postgres.DB) {
	tb.Helper()
	dsn := pgtest.DB(tb)
	if _, _, err := postgres.Migrate(context.Background(), dsn); err != nil {
		tb.Fatal(err)
	}
	db, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return dsn, db
}

func TestAuditStoreConformance(t *testing.T) {
	audittest.Run(t, func(t *testing.T) audit.Store {
		s := migrated(t).Audit()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBudgetStoreConformance(t *testing.T) {
	// One database for every subtest: the suite keeps its sessions apart.
	db := migrated(t)
	// Each Record is a round trip to one hot row: 8,000 of them show that
	// concurrent updates are not lost, in seconds.
	budgettest.RunWith(t, budgettest.Options{ConcurrentRecords: 8000}, func(t *testing.T) budget.Store {
		s := db.Budgets()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestOpenNeedsMigrate(t *testing.T) {
	ctx := t.Context()
	dsn := pgtest.DB(t)
	_, err := postgres.Open(ctx, dsn)
	if err == nil || !strings.Contains(err.Error(), "agentsec migrate") {
		t.Fatalf("Open of an empty database: %v, want an error naming agentsec migrate", err)
	}
	from, to, err := postgres.Migrate(ctx, dsn)
	if err != nil || from != 0 || to < 1 {
		t.Fatalf("Migrate = %d, %d, %v; want 0, ≥1, nil", from, to, err)
	}
	// Migrating again changes nothing.
	if from2, to2, err := postgres.Migrate(ctx, dsn); err != nil || from2 != to || to2 != to {
		t.Fatalf("second Migrate = %d, %d, %v; want %d, %d, nil", from2, to2, err, to, to)
	}
	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	// A database from a newer agentsec is refused by both.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE agentsec_meta SET value = '999' WHERE key = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Open(ctx, dsn); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: %v, want an error saying it is newer", err)
	}
	if _, _, err := postgres.Migrate(ctx, dsn); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Migrate of a newer schema: %v, want an error saying it is newer", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := t.Context()
	for _, tt := range []struct{ name, dsn, want string }{
		{"not a connection string", "postgres://u:secret@[::1", "not valid"},
		{"nothing listening", "postgres://agentsec:secret@127.0.0.1:1/agentsec?connect_timeout=2", "connecting to 127.0.0.1:1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := postgres.Open(ctx, tt.dsn)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open(%q) = %v, want an error containing %q", tt.dsn, err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

func TestAuditStoreShared(t *testing.T) {
	audittest.RunShared(t, func(t *testing.T, n int) []audit.SharedStore {
		// Each handle has a pool of its own, as each replica does.
		dsn := pgtest.DB(t)
		if _, _, err := postgres.Migrate(t.Context(), dsn); err != nil {
			t.Fatal(err)
		}
		out := make([]audit.SharedStore, n)
		for i := range out {
			db, err := postgres.Open(t.Context(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = db.Audit()
			db.Close()
			t.Cleanup(func() { out[i].Close() })
		}
		return out
	})
}

// A log whose shared store holds fewer records than it appended — rows
// deleted from the database behind it — refuses to append: it would
// extend a tree that is not the one it signed.
func TestAppendRefusesMissingRecords(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	l, err := audit.NewLog(ctx, db.Audit(), audit.Options{Namespace: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5 {
		if _, err := l.Log(ctx, audittest.BenchRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `DELETE FROM agentsec_audit_records WHERE seq >= 3; UPDATE agentsec_audit_head SET size = 3`); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Log(ctx, audittest.BenchRecord(5)); err == nil || !strings.Contains(err.Error(), "records are missing") {
		t.Fatalf("Log after records were deleted: %v, want an error saying records are missing", err)
	}
	var size int64
	if err := conn.QueryRow(ctx, `SELECT size FROM agentsec_audit_head`).Scan(&size); err != nil || size != 3 {
		t.Errorf("head after the refused append: %d, %v; want 3", size, err)
	}
}

// A replica that holds the log's head and stops answering doesn't hold
// every other replica's appends up: they fail after lock_timeout (here
// shortened in the connection string), and append again once it's gone.
func TestAppendGivesUpOnAHeldHead(t *testing.T) {
	ctx := t.Context()
	dsn := pgtest.DB(t)
	if _, _, err := postgres.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := postgres.Open(ctx, dsn+sep+"lock_timeout=500ms")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := audit.NewLog(ctx, db.Audit(), audit.Options{Namespace: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	frozen, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close(ctx)
	tx, err := frozen.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT size FROM agentsec_audit_head FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = l.Log(ctx, audit.Record{Event: "test", Outcome: audit.OutcomeAllowed})
	if !errors.Is(err, audit.ErrUnavailable) {
		t.Fatalf("Log while another holds the head = %v, want an error wrapping ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Log gave up after %v, want about the lock timeout", d)
	}
	tx.Rollback(ctx)
	if _, err := l.Log(ctx, audit.Record{Event: "test", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatalf("Log once the head is free: %v", err)
	}
	if n, err := l.Verify(ctx); n != 1 || err != nil {
		t.Errorf("Verify = %d, %v; want 1, nil", n, err)
	}
}

func TestSessionStore(t *testing.T) {
	ctx := t.Context()
	db := migrated(t)
	s := db.Sessions()
	defer s.Close()
	const idle = time.Second
	if err := s.SaveSession(ctx, "s1", "alice", []byte(`{"protocolVersion":"2025-11-25"}`)); err != nil {
		t.Fatal(err)
	}
	// Saving again keeps what was first saved.
	if err := s.SaveSession(ctx, "s1", "mallory", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// s1 is used with a long idle timeout, so that a slow machine can't
	// time it out; s2 with a short one.
	agent, init, found, err := s.LoadSession(ctx, "s1", time.Hour)
	if err != nil || !found || agent != "alice" || string(init) != `{"protocolVersion":"2025-11-25"}` {
		t.Fatalf("LoadSession = %q, %s, %v, %v", agent, init, found, err)
	}
	if _, _, found, err := s.LoadSession(ctx, "nope", time.Hour); found || err != nil {
		t.Errorf("LoadSession of an unknown session = found %v, %v", found, err)
	}
	if gone, err := s.RefreshSessions(ctx, []string{"s1", "nope"}, []string{"s1"}, time.Hour); err != nil || !slices.Equal(gone, []string{"nope"}) {
		t.Errorf("RefreshSessions = %q, %v; want [nope], nil", gone, err)
	}
	// s2, s3 and s4 saved at once; only s3 is used, halfway to idle: s3
	// is found after idle, s2 and s4 (held, but not used) are not.
	for _, id := range []string{"s2", "s3", "s4"} {
		if err := s.SaveSession(ctx, id, "alice", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(idle / 2)
	if gone, err := s.RefreshSessions(ctx, []string{"s3", "s4"}, []string{"s3"}, idle); err != nil || len(gone) != 0 {
		t.Fatalf("RefreshSessions halfway to idle = %q, %v; want none gone", gone, err)
	}
	time.Sleep(idle/2 + 200*time.Millisecond)
	if _, _, found, _ := s.LoadSession(ctx, "s3", idle); !found {
		t.Error("LoadSession lost a session used within idle")
	}
	for _, id := range []string{"s2", "s4"} {
		if _, _, found, _ := s.LoadSession(ctx, id, idle); found {
			t.Errorf("LoadSession found %s, idle past the timeout", id)
		}
	}
	if gone, _ := s.RefreshSessions(ctx, []string{"s2"}, []string{"s2"}, idle); !slices.Equal(gone, []string{"s2"}) {
		t.Errorf("RefreshSessions of a session idle past the timeout: gone %q, want [s2]", gone)
	}
	if _, _, found, _ := s.LoadSession(ctx, "s2", idle); found {
		t.Error("RefreshSessions revived a session idle past the timeout")
	}
	if err := s.DeleteSession(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, _, found, _ := s.LoadSession(ctx, "s1", time.Hour); found {
		t.Error("LoadSession found a deleted session")
	}
	if gone, _ := s.RefreshSessions(ctx, []string{"s1"}, []string{"s1"}, time.Hour); !slices.Equal(gone, []string{"s1"}) {
		t.Errorf("RefreshSessions of a deleted session: gone %q, want [s1]", gone)
	}
}

// An ended session's budget outlives it by one idle timeout — a replica
// that still holds the session charges the budget it had, never a fresh
// one — and then goes with it.
func TestSessionStoreForgetsBudgets(t *testing.T) {
	ctx := t.Context()
	db := migrated(t)
	s, budgets := db.Sessions(), db.Budgets()
	defer s.Close()
	defer budgets.Close()
	const idle = time.Second
	limits := budget.Limits{Tokens: 100, Calls: 1}
	for _, id := range []string{"deleted", "idle", "busy"} {
		if err := s.SaveSession(ctx, id, "alice", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := budgets.Create(ctx, id, limits); err != nil {
			t.Fatal(err)
		}
		if _, err := budgets.Reserve(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteSession(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := s.PruneSessions(ctx, idle); err != nil {
		t.Fatal(err)
	}
	// Within the idle timeout of its end, a replica that still holds the
	// session finds its budget spent, not fresh.
	if _, err := budgets.Reserve(ctx, "deleted"); !errors.Is(err, budget.ErrExceeded) {
		t.Errorf("Reserve on a session just deleted = %v, want %v", err, budget.ErrExceeded)
	}
	deadline := time.Now().Add(2*idle + 500*time.Millisecond)
	for time.Now().Before(deadline) {
		if _, err := s.RefreshSessions(ctx, []string{"busy"}, []string{"busy"}, idle); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 4)
	}
	if err := s.PruneSessions(ctx, idle); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"deleted", "idle"} {
		if _, err := budgets.Get(ctx, id); !errors.Is(err, budget.ErrUnknownSession) {
			t.Errorf("the budget of %s after PruneSessions: %v, want it gone", id, err)
		}
		if _, _, found, _ := s.LoadSession(ctx, id, time.Hour); found {
			t.Errorf("PruneSessions kept %s", id)
		}
	}
	if st, err := budgets.Get(ctx, "busy"); err != nil || st.Used.Calls != 1 {
		t.Errorf("the budget of a session in use: %+v, %v", st, err)
	}
}

// Replicas that migrate at once take turns: one creates the schema, the
// others find it done.
func TestConcurrentMigrate(t *testing.T) {
	dsn := pgtest.DB(t)
	const replicas = 4
	froms := make([]int, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() { froms[i], _, errs[i] = postgres.Migrate(t.Context(), dsn) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
	created := 0
	for _, from := range froms {
		if from == 0 {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d of %d concurrent migrations started from an empty database (versions %v), want 1", created, replicas, froms)
	}
	db, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
}

// Every replica reads the log's trust changes at start, and every quarter
// second after: in a log of many calls, the query reads the partial index
// of trust changes, not every record since the position it starts from.
func TestTrustChangesReadThroughTheirIndex(t *testing.T) {
	ctx := context.Background()
	st := migrated(t).Audit()
	defer st.Close()
	if err := st.Exec(ctx, `INSERT INTO agentsec_audit_records (seq, data, hashes, time, namespace, event, agent, session, tool, outcome)
		SELECT g, '\x00', '\x00', g, 'ns', CASE WHEN g % 10000 = 0 THEN 'trust.assign' WHEN g % 10000 = 1 THEN 'config.reload' ELSE 'tool.call' END, 'a', 's', 't', 'allow'
		FROM generate_series(0, 99999) g`); err != nil {
		t.Fatal(err)
	}
	if err := st.Exec(ctx, `ANALYZE agentsec_audit_records`); err != nil {
		t.Fatal(err)
	}
	for event, index := range map[string]string{"trust.assign": "agentsec_audit_trust_changes",
		"trust.revoke": "agentsec_audit_trust_changes", "config.reload": "agentsec_audit_reloads"} {
		plan, err := st.ExplainQuery(ctx, audit.Filter{Namespace: "ns", Event: event}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(plan, index) {
			t.Errorf("the query of %s records does not use their index:\n%s", event, plan)
		}
	}
}

// TestCommitsAreDurableWhateverTheDefault: a database whose default is
// synchronous_commit = off (a DBA's tuning) still gets commits that wait
// for the WAL's flush, for a reservation must be durable before its call
// runs; a connection string that asks for off is refused with the reason.
func TestCommitsAreDurableWhateverTheDefault(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DB(t)
	if _, _, err := postgres.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{conn.Config().Database}.Sanitize()+" SET synchronous_commit = off"); err != nil {
		t.Fatal(err)
	}
	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Setting(ctx, "synchronous_commit"); err != nil || v != "on" {
		t.Errorf("synchronous_commit on the store's connections = %q, %v; want on", v, err)
	}
	withOff := dsn + "?synchronous_commit=off"
	if strings.Contains(dsn, "?") {
		withOff = dsn + "&synchronous_commit=off"
	}
	if !strings.Contains(dsn, "://") {
		withOff = dsn + " synchronous_commit=off"
	}
	if db, err := postgres.Open(ctx, withOff); err == nil || !strings.Contains(err.Error(), "synchronous_commit") {
		if db != nil {
			db.Close()
		}
		t.Errorf("a connection string asking for synchronous_commit=off: %v, want refused", err)
	}
}

func TestRequireDurableCommits(t *testing.T) {
	for v, ok := range map[string]bool{"on": true, "ON": true, "local": true, "remote_apply": true,
		"remote_write": true, "off": false, "false": false, "0": false, "": false, "nonsense": false} {
		params := map[string]string{"synchronous_commit": v}
		if err := postgres.RequireDurableCommits(params); (err == nil) != ok {
			t.Errorf("synchronous_commit=%q: %v, want accepted %v", v, err, ok)
		}
	}
	params := map[string]string{}
	if err := postgres.RequireDurableCommits(params); err != nil || params["synchronous_commit"] != "on" {
		t.Errorf("unset: %v, %v; want set to on", err, params)
	}
}
