package postgres

import (
	"context"
	"math"
	"strings"

	"github.com/agentsec/agentsec/audit"
)

// MaxBatchesSending is how many operations of a kind are on their way at
// once.
const MaxBatchesSending = maxBatchesSending

// MaxReservationsSending is how many reservations are on their way at
// once, not counting those that ride appends.
const MaxReservationsSending = maxReservationsSending

// DefaultMaxConns is the size of a DB's pool unless its connection
// string says otherwise.
const DefaultMaxConns = defaultMaxConns

// Queued is how many operations of s wait for a batch.
func (s *BudgetStore) Queued() int {
	s.reservations.mu.Lock()
	n := len(s.reservations.queue)
	s.reservations.mu.Unlock()
	s.changes.mu.Lock()
	n += len(s.changes.queue)
	s.changes.mu.Unlock()
	s.lazyCommits.mu.Lock()
	defer s.lazyCommits.mu.Unlock()
	return n + len(s.lazyCommits.queue)
}

// Unbatched makes every operation of s go out on its own, as if no other
// were on its way: the benchmarks' baseline.
func (s *BudgetStore) Unbatched() {
	s.reservations.sendingMax = math.MaxInt
	s.changes.sendingMax = math.MaxInt
	s.lazyCommits.sendingMax = math.MaxInt
}

// ExplainQuery returns PostgreSQL's plan of QueryEntries' query for f.
func (s *AuditStore) ExplainQuery(ctx context.Context, f audit.Filter, from uint64) (string, error) {
	sql, args := querySQL(f, from)
	rows, err := s.db.pool.Query(ctx, "EXPLAIN "+sql, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		plan = append(plan, line)
	}
	return strings.Join(plan, "\n"), rows.Err()
}

// Exec runs a statement on the store's database.
func (s *AuditStore) Exec(ctx context.Context, sql string) error {
	_, err := s.db.pool.Exec(ctx, sql)
	return err
}

// BreakRiders makes the reservations that ride db's appends fail, with
// a statement the server refuses as it runs. It is called before db is
// used.
func (db *DB) BreakRiders() {
	db.riderSQL = `SELECT 1 / (cardinality($1::text[]) - cardinality($1::text[]))`
}

// Setting is the value of a server setting on one of db's connections.
func (db *DB) Setting(ctx context.Context, name string) (string, error) {
	var v string
	err := db.pool.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	return v, err
}

// RequireDurableCommits is requireDurableCommits.
var RequireDurableCommits = requireDurableCommits
