package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// CheckCheckpointFile reports whether a Log can write its checkpoints to
// path, its Options.CheckpointFile. A path ending in a separator must be
// an existing directory; a directory must be writable; a file's directory
// must exist and be writable, since the file is replaced by a rename
// there. Writability is found out by creating and removing a temporary
// file: permission bits don't tell (read-only mounts, ACLs, root).
//
// NewLog calls it, so that a destination that can't be written stops the
// log at start rather than at its first checkpoint; "agentsec config
// check" calls it too.
func CheckCheckpointFile(path string) error {
	if path == "" {
		return errors.New("audit: the checkpoint file path is empty")
	}
	fi, err := os.Stat(path)
	if endsInSeparator(path) {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("audit: checkpoint directory %s does not exist: create it (a path ending in %c names a directory)",
				path, filepath.Separator)
		case err != nil:
			return fmt.Errorf("audit: checkpoint directory %s: %w", path, err)
		case !fi.IsDir():
			return fmt.Errorf("audit: checkpoint directory %s is not a directory", path)
		}
	}
	switch {
	case err == nil && fi.IsDir():
		if err := probeDir(path); err != nil {
			return fmt.Errorf("audit: checkpoint directory %s is not writable: %w", path, err)
		}
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("audit: checkpoint file: %w", err)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("audit: checkpoint file %s: its directory %s does not exist: create it", path, dir)
	case err != nil:
		return fmt.Errorf("audit: checkpoint file %s: %w", path, err)
	case !di.IsDir():
		return fmt.Errorf("audit: checkpoint file %s: %s is not a directory", path, dir)
	}
	if err := probeDir(dir); err != nil {
		return fmt.Errorf("audit: checkpoint file %s: its directory %s is not writable: %w", path, dir, err)
	}
	return nil
}

// checkpointDir reports whether a valid checkpoint destination names a
// directory. A Log decides once, when it opens: a directory that
// disappears later is an error, not a reason to write a file of its name.
func checkpointDir(path string) bool {
	fi, err := os.Stat(path)
	return endsInSeparator(path) || (err == nil && fi.IsDir())
}

func endsInSeparator(path string) bool {
	return path != "" && os.IsPathSeparator(path[len(path)-1])
}

// probeDir creates and removes a temporary file in dir.
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, ".agentsec-check-*")
	if err != nil {
		return err
	}
	return errors.Join(f.Close(), os.Remove(f.Name()))
}

// writeCheckpointFile writes a signed checkpoint to path, or, if dir is
// set, to path/<size> and path/latest.
func writeCheckpointFile(path string, dir bool, size uint64, signed []byte) error {
	if dir {
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
