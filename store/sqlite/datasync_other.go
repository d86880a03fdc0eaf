//go:build !linux

package sqlite

import "os"

// datasync flushes f to stable storage.
func datasync(f *os.File) error { return f.Sync() }

// writeSynced writes b at off in f and flushes it to stable storage.
func writeSynced(f *os.File, b []byte, off int64) error { return writeThenSync(f, b, off) }
