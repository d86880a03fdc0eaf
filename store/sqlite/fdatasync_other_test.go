//go:build !linux

package sqlite_test

import "os"

// fdatasync is fsync where fdatasync(2) is missing, as the store's own
// datasync is (datasync_other.go).
func fdatasync(f *os.File) error { return f.Sync() }
