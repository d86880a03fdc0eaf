package postgres

import "math"

// MaxBatchesSending is how many operations of a kind are on their way at
// once.
const MaxBatchesSending = maxBatchesSending

// DefaultMaxConns is the size of a DB's pool unless its connection
// string says otherwise.
const DefaultMaxConns = defaultMaxConns

// Queued is how many operations of s wait for a batch.
func (s *BudgetStore) Queued() int {
	s.reservations.mu.Lock()
	n := len(s.reservations.queue)
	s.reservations.mu.Unlock()
	s.changes.mu.Lock()
	defer s.changes.mu.Unlock()
	return n + len(s.changes.queue)
}

// Unbatched makes every operation of s go out on its own, as if no other
// were on its way: the benchmarks' baseline.
func (s *BudgetStore) Unbatched() {
	s.reservations.sendingMax = math.MaxInt
	s.changes.sendingMax = math.MaxInt
}
