//go:build !unix

package sqlite

// segmentOpenFlags are added to every open of an existing segment; the
// regular-file check after it stands alone here.
const segmentOpenFlags = 0
