package sqlite

import "time"

// Abandon closes s as a crash would leave it: the records not yet
// committed to the database stay only in the record log. It releases the
// lock, as the end of a crashed process does.
func Abandon(s *Store) {
	s.abandoned.Store(true)
	s.Close()
}

// SetTestHook sets the function a Store calls at named points of its
// appends ("writing", "synced", "indexing", "indexed", "segment"), and
// returns a function that restores the previous one.
func SetTestHook(fn func(point string)) (restore func()) {
	old := testHook
	testHook = fn
	return func() { testHook = old }
}

// SetSegmentSize sets the size of the record log's segments, how many
// records the database takes between checkpoints and how long a record
// waits in the tail at most, and returns a function that restores them.
func SetSegmentSize(size int64, checkpoint int, delay time.Duration) (restore func()) {
	oldSize, oldCheckpoint, oldDelay := segmentSize, checkpointRecords, indexDelay
	segmentSize, checkpointRecords, indexDelay = size, checkpoint, delay
	return func() { segmentSize, checkpointRecords, indexDelay = oldSize, oldCheckpoint, oldDelay }
}
