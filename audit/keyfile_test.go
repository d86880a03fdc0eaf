//go:build unix

package audit_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// TestReadSignerKeyFile: a signer key is read from a private regular file
// of its size; a key others may read or write, a pipe (which would hang
// the reader) and a file far larger than a key are refused at once, each
// saying why.
func TestReadSignerKeyFile(t *testing.T) {
	dir := t.TempDir()
	key, _, err := audit.GenerateKey("test")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	if got, err := audit.ReadSignerKeyFile(write("ok.key", key+"\n", 0o600)); err != nil || got != key {
		t.Errorf("a private key file: %q, %v", got, err)
	}
	if _, err := audit.ReadSignerKeyFile(write("group.key", key+"\n", 0o640)); err != nil {
		t.Errorf("a key its group may read: %v", err)
	}
	for name, mode := range map[string]os.FileMode{"world.key": 0o644, "groupw.key": 0o660, "otherw.key": 0o602} {
		if _, err := audit.ReadSignerKeyFile(write(name, key+"\n", mode)); err == nil || !strings.Contains(err.Error(), "other users") {
			t.Errorf("a key of mode %#o: %v, want refused", mode, err)
		}
	}
	if _, err := audit.ReadSignerKeyFile(write("big.key", strings.Repeat("x", 5000), 0o600)); err == nil || !strings.Contains(err.Error(), "larger") {
		t.Errorf("a file of 5,000 bytes: %v, want refused", err)
	}
	fifo := filepath.Join(dir, "fifo.key")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := audit.ReadSignerKeyFile(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a pipe: %v, want refused", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a pipe as a key hung")
	}
}
