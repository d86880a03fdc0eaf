// Package regularfile opens files that must be regular files of a bounded
// size — a signer key, a segment of a record log — where whoever can
// write their directory may have put something else: a FIFO, which would
// hang the reader (the open does not block on one: O_NONBLOCK on Unix), a
// device, which would fill its memory, or a file far larger than any the
// program writes. The checks are of the file opened, not of one looked at
// before.
package regularfile

import (
	"fmt"
	"io"
	"os"
)

// Open opens name with flag and returns it if it is a regular file of at
// most max bytes (max < 0: of any size); otherwise it returns why, the
// file closed.
func Open(name string, flag int, max int64) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(name, flag|openFlags, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s is not a regular file (%v)", name, fi.Mode().Type())
	case max >= 0 && fi.Size() > max:
		err = &TooLargeError{Name: name, Size: fi.Size(), Max: max}
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// ReadFile reads the regular file name, of at most max (≥ 0) bytes, and returns
// its bytes and what Stat said of it. A file that grows past max as it is
// read is refused too.
func ReadFile(name string, max int64) ([]byte, os.FileInfo, error) {
	f, fi, err := Open(name, os.O_RDONLY, max)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > max {
		return nil, nil, &TooLargeError{Name: name, Size: int64(len(data)), Max: max}
	}
	return data, fi, nil
}

// A TooLargeError is a file larger than its reader's bound.
type TooLargeError struct {
	Name      string
	Size, Max int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s holds %d bytes or more, larger than %d", e.Name, e.Size, e.Max)
}
