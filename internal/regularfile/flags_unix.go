//go:build unix

package regularfile

import "syscall"

// openFlags are added to every open: a FIFO does not block it (it is then
// refused, as anything but a regular file is).
const openFlags = syscall.O_NONBLOCK
