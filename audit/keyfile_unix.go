//go:build unix

package audit

import "syscall"

// keyOpenFlags are added to the open of a key file: a FIFO does not block
// the open (it is then refused, as anything but a regular file is).
const keyOpenFlags = syscall.O_NONBLOCK
