//go:build unix

package sqlite

import "syscall"

// segmentOpenFlags are added to every open of an existing segment: a
// symlink is not followed (regularfile.Open refuses anything else but a
// regular file).
const segmentOpenFlags = syscall.O_NOFOLLOW
