//go:build unix

package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOutputPaths: -o resolves links as the kernel does — a ".." after a
// linked directory is taken from where the link leads — writes a pipe
// directly, refuses a dangling link and a directory, and refuses the
// audit database's files named through a link to the database.
func TestOutputPaths(t *testing.T) {
	dir := demoLog(t)
	db := filepath.Join(dir, "log.db")
	checkpoint := func(out string) (int, string) {
		code, _, stderr := runExit(t, &Main{}, "audit", "checkpoint", "-db", db, "-o", out)
		return code, stderr
	}

	// var/current → srv/releases/v2, and v2/checkpoint → ../shared/checkpoint.
	releases := filepath.Join(dir, "srv", "releases")
	for _, d := range []string{filepath.Join(releases, "v2"), filepath.Join(releases, "shared"), filepath.Join(dir, "var")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	anchor := filepath.Join(releases, "shared", "checkpoint")
	if err := os.WriteFile(anchor, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(releases, "v2"), filepath.Join(dir, "var", "current")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../shared/checkpoint", filepath.Join(releases, "v2", "checkpoint")); err != nil {
		t.Fatal(err)
	}
	if code, stderr := checkpoint(filepath.Join(dir, "var", "current", "checkpoint")); code != 0 {
		t.Fatalf("-o through a linked directory: exit %d: %s", code, stderr)
	}
	if got, _ := os.ReadFile(anchor); !strings.Contains(string(got), "\n12\n") {
		t.Errorf("the file the links lead to reads %q, want the checkpoint", got)
	}

	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	read := make(chan string, 1)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			read <- err.Error()
			return
		}
		defer f.Close()
		data, _ := io.ReadAll(f)
		read <- string(data)
	}()
	if code, stderr := checkpoint(fifo); code != 0 {
		t.Fatalf("-o a pipe: exit %d: %s", code, stderr)
	}
	if got := <-read; !strings.Contains(got, "\n12\n") {
		t.Errorf("the pipe's reader got %q, want the checkpoint", got)
	}

	if err := os.Symlink(filepath.Join(dir, "nowhere", "x"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	for out, want := range map[string]string{filepath.Join(dir, "dangling"): "does not exist", dir: "is a directory"} {
		if code, stderr := checkpoint(out); code == 0 || !strings.Contains(stderr, want) {
			t.Errorf("-o %s: exit %d: %s, want refused: %s", filepath.Base(out), code, stderr, want)
		}
	}

	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(db, link); err != nil {
		t.Fatal(err)
	}
	segments, _ := filepath.Glob(db + "-segments/*")
	if len(segments) == 0 {
		t.Fatal("the demo log has no record log segments to protect")
	}
	outs := []string{link + ".lock", db + ".lock", link,
		filepath.Join(link+"-segments", filepath.Base(segments[0])), segments[0]}
	for _, out := range outs {
		code, _, stderr := runExit(t, &Main{}, "audit", "export", "-db", link, "-o", out)
		if code == 0 || !strings.Contains(stderr, "the audit log's own") {
			t.Errorf("export -db link.db -o %s: exit %d: %s, want refused", out, code, stderr)
		}
	}
	if code, _, stderr := runExit(t, &Main{}, "audit", "verify", "-db", db, "-pubkey", filepath.Join(dir, "demo.pub")); code != 0 {
		t.Errorf("the log after the refused exports: verify exits %d: %s", code, stderr)
	}
}
