//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package sqlite

import (
	"errors"
	"os"
	"syscall"
)

// locksWriters says that a second writer of a database is refused here.
const locksWriters = true

// tryLock takes an exclusive flock(2) lock on f without waiting. The
// lock belongs to f's open file description: another open of the same
// file, in this process or another, is refused until f is closed.
func tryLock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return errLocked
		}
		return err
	}
}
