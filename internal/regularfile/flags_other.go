//go:build !unix

package regularfile

// openFlags are added to every open; the regular-file check after it
// stands alone here.
const openFlags = 0
