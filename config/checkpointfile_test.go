package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/config"
)

// unwritableDir returns a directory no file can be created in: a
// read-only one, or for root, whom permissions don't stop, /sys.
func unwritableDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "read-only")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, "/sys"} {
		f, err := os.CreateTemp(d, "probe")
		if err != nil {
			if fi, serr := os.Stat(d); serr == nil && fi.IsDir() {
				return d
			}
			continue
		}
		f.Close()
		os.Remove(f.Name())
	}
	t.Skip("found no directory this user can't write")
	return ""
}

// "config check" refuses a checkpoint destination the gateway could not
// write, naming the path and the cause, instead of letting every call be
// denied from the first checkpoint on.
func TestCheckpointFileChecked(t *testing.T) {
	dir := exampleDir(t) // holds demo.key and the directory anchor
	base := "namespace: n\nbudget: {tokens: 10, calls: 10}\naudit:\n  path: a.db\n  key_file: demo.key\n  checkpoint_file: "
	ok := []string{"anchor/", "anchor", "anchor/cp", "cp", filepath.Join(dir, "anchor") + "/"}
	for _, p := range ok {
		if _, err := config.Parse([]byte(base+p+"\n"), dir); err != nil {
			t.Errorf("checkpoint_file %s: %v", p, err)
		}
	}
	ro := unwritableDir(t)
	bad := []struct{ path, want string }{
		{"missing/", "line 6: audit.checkpoint_file: checkpoint directory " + filepath.Join(dir, "missing") + "/ does not exist: create it"},
		{filepath.Join(dir, "missing") + "/", "checkpoint directory " + filepath.Join(dir, "missing") + "/ does not exist"},
		{"missing/cp", "checkpoint file " + filepath.Join(dir, "missing", "cp") + ": its directory " + filepath.Join(dir, "missing") + " does not exist"},
		{"demo.key/", "checkpoint directory " + filepath.Join(dir, "demo.key") + "/: stat"},
		{ro + "/", "checkpoint directory " + ro + "/ is not writable"},
		{ro, "checkpoint directory " + ro + " is not writable"},
		{filepath.Join(ro, "cp"), "its directory " + ro + " is not writable"},
	}
	for _, tt := range bad {
		_, err := config.Parse([]byte(base+tt.path+"\n"), dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("checkpoint_file %s: got error %v, want one containing %q", tt.path, err, tt.want)
		}
	}
}
