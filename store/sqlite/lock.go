package sqlite

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"
)

// One process writes a log. The Store keeps the log's size in memory and
// extends the tree it last wrote, so a second writer on the same database
// would make the first one's appends fail — one call run but not recorded,
// then every call denied — with nothing saying why; and two writers
// creating a new database at once trip over each other's schema. So a
// writable Open first takes an exclusive lock on a file beside the
// database, <path>.lock, and keeps it until Close: a second writer is
// refused at once, with a message naming the holder, and a process that
// dies loses its lock with it (flock(2) locks belong to the open file, not
// to the file's existence). ReadOnly opens take no lock, so the audit CLI
// reads while a gateway writes.
//
// The lock file is never removed: removing it could let two processes
// each lock a different file of that name.

// InUseError is Open's error when another writer holds the database: a
// running gateway, or another Store in this process.
type InUseError struct {
	// Path is the database.
	Path string
	// Holder describes the writer holding it, as its lock file says: its
	// process id, host, command line and since when. Empty if the lock
	// file says nothing, as while its holder is still starting.
	Holder string
}

func (e *InUseError) Error() string {
	holder := "another process"
	if e.Holder != "" {
		holder = e.Holder
	}
	return fmt.Sprintf("sqlite: the audit log %s is in use by %s: one process writes a log; stop it, or give this one another audit.path",
		e.Path, holder)
}

// errLocked is tryLock's report that another open file holds the lock.
var errLocked = errors.New("locked")

// holder is what a lock file says about the writer holding it. Its
// contents are only for people: the lock itself is the flock.
type holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// String describes h for an error message. The strings come from a file
// others can write, so they are quoted.
func (h holder) String() string {
	return fmt.Sprintf("pid %d on host %q (%q), since %s", h.PID, h.Host, h.Command, h.Since.UTC().Format(time.RFC3339))
}

// maxCommand bounds the command line a lock file records.
const maxCommand = 512

// lockDatabase takes the write lock of the database at path, or returns
// an *InUseError naming who holds it.
func lockDatabase(path string) (*os.File, error) {
	name := path + ".lock"
	// 0o644 as SQLite creates the database itself: whoever may read the
	// log may see which process writes it.
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sqlite: the directory of %s does not exist: create it, or check the path", path)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: opening the database's lock file: %w", err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &InUseError{Path: path, Holder: readHolder(name)}
		}
		return nil, fmt.Errorf("sqlite: locking %s: %w (the database must be on a file system with file locks)", name, err)
	}
	host, _ := os.Hostname()
	cmd := strings.Join(os.Args, " ")
	if len(cmd) > maxCommand {
		cmd = cmd[:maxCommand] + "…"
	}
	data, err := json.Marshal(holder{PID: os.Getpid(), Host: host, Command: cmd, Since: time.Now().UTC()})
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
	}
	if err != nil {
		// A disk that can't take these bytes can't take the log's either.
		f.Close()
		return nil, fmt.Errorf("sqlite: writing lock file %s: %w", name, err)
	}
	return f, nil
}

// readHolder describes the holder of the lock file name. A holder writes
// the file just after it takes the lock, so an empty file is read again a
// few times before it is taken to say nothing.
func readHolder(name string) string {
	for range 20 {
		f, err := os.Open(name)
		if err != nil {
			return ""
		}
		data, err := io.ReadAll(io.LimitReader(f, 4<<10))
		f.Close()
		var h holder
		if err == nil && len(data) > 0 && json.Unmarshal(data, &h) == nil {
			return h.String()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ""
}

// unlockDatabase empties the lock file, so that it names no one once its
// holder is gone, and releases the lock.
func unlockDatabase(f *os.File) error {
	return errors.Join(f.Truncate(0), f.Close())
}
