package postgres

// MaxBatchesSending is how many reservation batches are sent at once.
const MaxBatchesSending = maxBatchesSending

// DefaultMaxConns is the size of a DB's pool unless its connection
// string says otherwise.
const DefaultMaxConns = defaultMaxConns

// Queued is how many reservations wait for a batch.
func (s *BudgetStore) Queued() int {
	s.reserver.mu.Lock()
	defer s.reserver.mu.Unlock()
	return len(s.reserver.queue)
}
