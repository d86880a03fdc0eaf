//go:build unix

package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGHUP reloads as agentsec reload does, and says on stderr what
// happened; a file SIGHUP finds invalid is refused, with its error.
func TestServeReloadsOnSIGHUP(t *testing.T) {
	s := serveConfig(t, reloadConfig("privileged", ""))
	s.write(reloadConfig("verified", ""))
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !s.allowed(reloadBotToken, "write"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload: %s", s.stderr.String())
		}
	}
	for !strings.Contains(s.stderr.String(), "configuration reloaded") {
		time.Sleep(10 * time.Millisecond)
	}

	s.write(reloadConfig("root", ""))
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s.stderr.String(), "reload refused"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal logged: %s", s.stderr.String())
		}
	}
	if !strings.Contains(s.stderr.String(), `unknown trust level \"root\"`) && !strings.Contains(s.stderr.String(), `unknown trust level "root"`) {
		t.Errorf("the refusal does not say why: %s", s.stderr.String())
	}
	if !s.allowed(reloadBotToken, "write") {
		t.Error("a refused reload changed what is in force")
	}
	s.stop()
	if n := len(s.records("config.reload")); n != 1 {
		t.Errorf("%d config.reload records, want 1", n)
	}
}
