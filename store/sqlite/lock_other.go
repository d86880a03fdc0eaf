//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd)

package sqlite

import "os"

// locksWriters says that a second writer of a database is not refused
// here.
const locksWriters = false

// tryLock takes no lock where flock(2) is missing (Windows among them,
// for now): there, as before locks existed, a second writer is not
// refused, and a writer that falls behind the file fails its appends on
// their sequence numbers instead — the log never forks.
func tryLock(*os.File) error { return nil }
