//go:build !unix

package audit

// keyOpenFlags are added to the open of a key file; the regular-file
// check after it stands alone here.
const keyOpenFlags = 0
