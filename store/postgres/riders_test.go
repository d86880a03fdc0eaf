package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/store/postgres"
)

// ridingStores returns a budget store and an audit log on one database,
// with sessions "r0", "r1", … of one call each, and the reservations
// made while the store's one sender is held on a locked row: they wait
// in its queue, and an append is the only way they can go out. broken
// makes their statement fail when it rides.
func ridingStores(t *testing.T, sessions int, broken bool) (*postgres.BudgetStore, *audit.Log, <-chan error) {
	t.Helper()
	_, s, l, reserved := ridingStoresCtx(t, t.Context(), sessions, broken)
	return s, l, reserved
}

// ridingStoresCtx is ridingStores with the reservations made on
// reserveCtx, and the database's connection string.
func ridingStoresCtx(t *testing.T, reserveCtx context.Context, sessions int, broken bool) (string, *postgres.BudgetStore, *audit.Log, <-chan error) {
	t.Helper()
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	if broken {
		db.BreakRiders()
	}
	s := db.Budgets()
	t.Cleanup(func() { s.Close() })
	l, err := audit.NewLog(ctx, db.Audit(), audit.Options{Namespace: "riders"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for i := range sessions {
		if _, err := s.Create(ctx, fmt.Sprint("r", i), budget.Limits{Tokens: 100, Calls: 1}); err != nil {
			t.Fatal(err)
		}
	}
	holdReservers(t, dsn, s)
	reserved := make(chan error, sessions)
	for i := range sessions {
		go func() {
			_, err := s.Reserve(reserveCtx, fmt.Sprint("r", i))
			reserved <- err
		}()
	}
	waitQueued(t, s, sessions)
	return dsn, s, l, reserved
}

// Reservations queued when an append to the same database commits go
// in its transaction: they are answered, and their slots taken, though
// no reservation of their own could go out.
func TestReservationsRideAppends(t *testing.T) {
	const sessions = 5
	s, l, reserved := ridingStores(t, sessions, false)
	rec, err := l.Log(t.Context(), audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed})
	if err != nil {
		t.Fatal(err)
	}
	for range sessions {
		select {
		case err := <-reserved:
			if err != nil {
				t.Fatalf("a reservation that rode an append: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("reservations queued behind a held sender were not answered 10 s after an append")
		}
	}
	if s.Queued() != 0 {
		t.Errorf("%d reservations still queued", s.Queued())
	}
	for i := range sessions {
		if st, err := s.Get(t.Context(), fmt.Sprint("r", i)); err != nil || st.Used.Calls != 1 {
			t.Errorf("r%d: Get = %+v, %v; want its one call used", i, st, err)
		}
	}
	if rec.Seq != 0 || l.Size() != 1 {
		t.Errorf("the append that carried them: record %d, log of %d; want record 0 of 1", rec.Seq, l.Size())
	}
}

// Reservations whose statement fails as they ride an append fail alone:
// each is answered as unavailable and takes no slot, and the append's
// records go in, the log whole and still taking appends.
func TestFailedRidersLeaveTheAppend(t *testing.T) {
	const sessions = 3
	s, l, reserved := ridingStores(t, sessions, true)
	ctx := t.Context()
	if _, err := l.Log(ctx, audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatalf("an append whose riders failed: %v", err)
	}
	for range sessions {
		select {
		case err := <-reserved:
			if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "22012" {
				t.Fatalf("a reservation whose statement failed: %v, want the server's division by zero", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("reservations queued behind a held sender were not answered 10 s after an append")
		}
	}
	for i := range sessions {
		if st, err := s.Get(ctx, fmt.Sprint("r", i)); err != nil || st.Used.Calls != 0 {
			t.Errorf("r%d: Get = %+v, %v; want no call used", i, st, err)
		}
	}
	if _, err := l.Log(ctx, audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatalf("the next append: %v", err)
	}
	if err := l.Err(); err != nil {
		t.Errorf("the log after its riders failed: %v", err)
	}
	if n, err := l.Verify(ctx); err != nil || n != 2 {
		t.Errorf("Verify = %d, %v; want 2 records", n, err)
	}
}

// A reservation whose caller gives up while it rides an append is
// answered with its context's error at once; the append goes in, and
// the slot it took is given back.
func TestRiderAbandoned(t *testing.T) {
	ctx := t.Context()
	short, cancel := context.WithCancel(ctx)
	defer cancel()
	dsn, s, l, reserved := ridingStoresCtx(t, short, 1, false)
	// The append carries the reservation, which waits for its row.
	unlock := lockRow(t, dsn, "r0")
	appended := make(chan error, 1)
	go func() {
		_, err := l.Log(ctx, audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed})
		appended <- err
	}()
	waitQueued(t, s, 0)
	waitForBlocked(t, dsn, postgres.MaxReservationsSending+1)
	cancel()
	wantCanceled(t, reserved, "a reservation cancelled while it rides")
	unlock()
	if err := <-appended; err != nil {
		t.Fatalf("the append that carried it: %v", err)
	}
	waitGivenBack(t, s, "r0")
	if l.Size() != 1 {
		t.Errorf("log of %d records, want 1", l.Size())
	}
}

// A reservation made after the log announced its next append
// (AppendComing) waits to ride it, though it could have gone out on its
// own, and is answered once the append commits.
func TestReservationsWaitForAnAnnouncedAppend(t *testing.T) {
	ctx := t.Context()
	db := migrated(t)
	s := db.Budgets()
	defer s.Close()
	store := db.Audit()
	l, err := audit.NewLog(ctx, store, audit.Options{Namespace: "announced"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := s.Create(ctx, "w", budget.Limits{Tokens: 100, Calls: 1}); err != nil {
		t.Fatal(err)
	}
	store.AppendComing()
	reserved := make(chan error, 1)
	go func() {
		_, err := s.Reserve(ctx, "w")
		reserved <- err
	}()
	waitQueued(t, s, 1)
	select {
	case err := <-reserved:
		t.Fatalf("a reservation made while an append was announced was answered before it: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := l.Log(ctx, audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-reserved:
		if err != nil {
			t.Fatalf("the reservation that rode the announced append: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reservation was not answered 10 s after the announced append")
	}
	if st, err := s.Get(ctx, "w"); err != nil || st.Used.Calls != 1 {
		t.Errorf("Get = %+v, %v; want its one call used", st, err)
	}
}

// A rider whose session's row another transaction holds fails after
// riderLockTimeout, and the append it rode goes in: a budget row held
// from outside holds the log's head, and every replica's appends, for a
// second, not for the connection's lock_timeout.
func TestRidersDontHoldTheHead(t *testing.T) {
	ctx := t.Context()
	dsn, s, l, reserved := ridingStoresCtx(t, ctx, 1, false)
	unlock := lockRow(t, dsn, "r0")
	defer unlock()
	start := time.Now()
	if _, err := l.Log(ctx, audit.Record{Event: "test", Agent: "a", Outcome: audit.OutcomeAllowed}); err != nil {
		t.Fatalf("an append whose rider's row is held: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("an append whose rider's row is held took %v, want about a second", took)
	}
	select {
	case err := <-reserved:
		if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "55P03" {
			t.Fatalf("a rider whose row is held: %v, want the server's lock timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a rider whose row is held was not answered 10 s after its append")
	}
	unlock()
	if st, err := s.Get(ctx, "r0"); err != nil || st.Used.Calls != 0 {
		t.Errorf("Get = %+v, %v; want no call used", st, err)
	}
	if l.Size() != 1 || l.Err() != nil {
		t.Errorf("log of %d records, error %v; want 1 and none", l.Size(), l.Err())
	}
}
