package audit

import (
	"os"
	"path/filepath"
	"strconv"
)

// writeCheckpointFile writes a signed checkpoint to path, or, if path is
// a directory, to path/<size> and path/latest.
func writeCheckpointFile(path string, size uint64, signed []byte) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		if err := writeFileAtomic(filepath.Join(path, strconv.FormatUint(size, 10)), signed); err != nil {
			return err
		}
		return writeFileAtomic(filepath.Join(path, "latest"), signed)
	}
	return writeFileAtomic(path, signed)
}

// writeFileAtomic replaces path with data so that a crash leaves either
// the old file or the new one: write a temporary file beside it, sync it,
// rename it over path, and sync the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
