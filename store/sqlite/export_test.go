package sqlite

// Abandon closes s as a crash would leave it: the index rows still
// pending are never written. It releases the lock, as the end of a
// crashed process does.
func Abandon(s *Store) {
	s.appendMu.Lock()
	s.pending = nil
	s.appendMu.Unlock()
	s.Close()
}
