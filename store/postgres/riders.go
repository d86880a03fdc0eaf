package postgres

import (
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Reservations ride the audit log's appends. A governed call commits a
// reservation before its tool runs and an audit record after, each a
// wait for the server's WAL to reach the disk; with many callers, the
// reservations queued when an append of the same database is about to
// commit go in its transaction instead (batcher's carriers): one commit,
// one flush, for both. An append boards the DB's budget stores'
// reservations as it begins, or as soon as the log announces it
// (AppendComing), and takes their queue into its last round trip, where
// a savepoint keeps a failed reservation statement from failing the
// append: the records go in, and the reservations that rode with them
// fail, as their own commit would have.

// riderStores are the budget stores whose reservations ride the DB's
// appends: those taken from it and not closed.
func (db *DB) riderStores() []*BudgetStore {
	if p := db.riders.Load(); p != nil {
		return *p
	}
	return nil
}

// setRider adds s to the stores whose reservations ride the DB's
// appends, or removes it.
func (db *DB) setRider(s *BudgetStore, rides bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	stores := slices.DeleteFunc(slices.Clone(db.riderStores()), func(t *BudgetStore) bool { return t == s })
	if rides {
		stores = append(stores, s)
	}
	db.riders.Store(&stores)
}

// A ride is an append's carrying of its DB's queued reservations.
type ride struct {
	stores  []*BudgetStore
	taken   [][]*pending[string, reserved] // by store
	riders  []string                       // the sessions taken, store after store
	settled bool
}

// board boards the reservations of db's budget stores: an append that
// will commit soon calls it, and then take or alight.
func (db *DB) board() *ride {
	r := &ride{stores: db.riderStores()}
	for _, s := range r.stores {
		s.reservations.board()
	}
	return r
}

// take takes the queued reservations, and returns their sessions, for
// reserveLocked in the append's transaction.
func (r *ride) take() []string {
	r.settled = true
	r.taken = make([][]*pending[string, reserved], len(r.stores))
	for i, s := range r.stores {
		r.taken[i] = s.reservations.take()
		for _, p := range r.taken[i] {
			r.riders = append(r.riders, p.op)
		}
	}
	return r.riders
}

// alight ends the boarding without taking, if take was not called: the
// queued reservations go out on their own.
func (r *ride) alight() {
	if r.settled {
		return
	}
	r.settled = true
	for _, s := range r.stores {
		s.reservations.alight()
	}
}

// deliver gives the reservations taken their answers: out, one per
// session take returned, or, if err is set, err for all.
func (r *ride) deliver(out []reserved, err error) {
	if len(r.riders) == 0 {
		return
	}
	if err == nil && len(out) != len(r.riders) {
		err = fmt.Errorf("%d answers for %d reservations", len(out), len(r.riders))
	}
	if err != nil {
		out = make([]reserved, len(r.riders))
		for i, session := range r.riders {
			out[i].err = unavailable(fmt.Sprintf("reserving a call for session %q", session), err)
		}
	}
	for i, s := range r.stores {
		n := len(r.taken[i])
		gaveUp := s.reservations.deliver(r.taken[i], out[:n])
		out = out[n:]
		if len(gaveUp) > 0 {
			// The slots of callers that gave up go back, but not on the
			// appender's time.
			go s.reservations.tellAbandoned(gaveUp)
		}
	}
}

// riderLockTimeout bounds the riders' wait for their sessions' rows,
// which the append makes holding the log's head: a budget row held by
// another transaction — agentsec's own hold one for a commit at most —
// fails the riders after it, and the records go in, where the
// connection's lock_timeout (10 s unless set) would hold every append.
const riderLockTimeout = "1s"

// ridersStatements is how many statements queueRiders queues.
const ridersStatements = 4

// queueRiders queues, in b, the riders' reservations (riderSQL, which
// is reserveLocked outside the tests) between a savepoint and its
// release, so that a failure of theirs can be rolled back alone, and
// with riderLockTimeout.
func (db *DB) queueRiders(b *pgx.Batch, riders []string) {
	b.Queue(`SAVEPOINT riders`)
	b.Queue(`SET LOCAL lock_timeout = '` + riderLockTimeout + `'`)
	b.Queue(db.riderSQL, riders)
	b.Queue(`RELEASE SAVEPOINT riders`)
}

// readRiders reads the results queueRiders queued: the riders' answers,
// or the error that failed them.
func readRiders(br pgx.BatchResults, riders []string) ([]reserved, error) {
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	out, err := readReserved(rows, riders)
	if err != nil {
		return nil, err
	}
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	return out, nil
}

// AppendComing implements audit.AppendForecaster: the log will append
// again, so the reservations made from now on wait to ride that append,
// not only from its start.
func (s *AuditStore) AppendComing() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == nil {
		s.next = s.db.board()
	}
}

// boarded returns the ride of an append that begins: the one AppendComing
// boarded, or a new one.
func (s *AuditStore) boarded() *ride {
	s.mu.Lock()
	r := s.next
	s.next = nil
	s.mu.Unlock()
	if r == nil {
		r = s.db.board()
	}
	return r
}
