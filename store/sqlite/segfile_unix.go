//go:build unix

package sqlite

import "syscall"

// segmentOpenFlags are added to every open of an existing segment: a
// symlink is not followed, and a FIFO does not block the open (it is then
// refused, as anything but a regular file is).
const segmentOpenFlags = syscall.O_NOFOLLOW | syscall.O_NONBLOCK
