//go:build !unix

package sqlite

// segmentOpenFlags are added to every open of an existing segment; the
// regular-file check of regularfile.Open stands alone here.
const segmentOpenFlags = 0
