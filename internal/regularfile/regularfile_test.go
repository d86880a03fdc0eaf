//go:build unix

package regularfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/internal/regularfile"
)

// TestReadFile: a regular file within the bound is read; a directory, a
// FIFO (at once, without waiting for a writer) and a file past the bound
// are refused, each saying why.
func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	if err := os.WriteFile(ok, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, fi, err := regularfile.ReadFile(ok, 5); err != nil || string(data) != "hello" || fi.Size() != 5 {
		t.Errorf("a file of 5 bytes, bound 5: %q, %v", data, err)
	}
	var tooLarge *regularfile.TooLargeError
	if _, _, err := regularfile.ReadFile(ok, 4); !errors.As(err, &tooLarge) || tooLarge.Size != 5 {
		t.Errorf("a file of 5 bytes, bound 4: %v, want a TooLargeError", err)
	}
	if _, _, err := regularfile.ReadFile(dir, 5); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v, want refused", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := regularfile.ReadFile(fifo, 5); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO: %v, want refused", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opening a FIFO waited for a writer")
	}
}
