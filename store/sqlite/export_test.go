package sqlite

// Abandon closes s as a crash would leave it: the records not yet
// committed to the database stay only in the record log. It releases the
// lock, as the end of a crashed process does.
func Abandon(s *Store) {
	s.abandoned.Store(true)
	s.Close()
}

// SetTestHook sets the function a Store calls at named points of its
// appends ("written", "synced", "indexing", "indexed", "segment"), and
// returns a function that restores the previous one.
func SetTestHook(fn func(point string)) (restore func()) {
	old := testHook
	testHook = fn
	return func() { testHook = old }
}

// SetSegmentSize sets the size of the record log's segments and how
// many records the database takes between checkpoints, and returns a
// function that restores them.
func SetSegmentSize(size int64, checkpoint int) (restore func()) {
	oldSize, oldCheckpoint := segmentSize, checkpointRecords
	segmentSize, checkpointRecords = size, checkpoint
	return func() { segmentSize, checkpointRecords = oldSize, oldCheckpoint }
}
