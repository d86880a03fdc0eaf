// Package syncbuf is a buffer that other goroutines can write — a
// logger, a child process's stderr — while a test reads it.
package syncbuf

import (
	"bytes"
	"strings"
	"sync"
)

// A Buffer collects what is written to it. Its methods are safe for
// concurrent use; its zero value is empty and ready.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written and not yet taken.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the lines written and not yet taken, empty ones left out.
func (b *Buffer) Lines() []string { return lines(b.String()) }

// TakeLines returns the lines written since the last TakeLines, empty
// ones left out, and forgets them.
func (b *Buffer) TakeLines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	b.buf.Reset()
	return lines(s)
}

func lines(s string) []string {
	var out []string
	for l := range strings.Lines(s) {
		if l = strings.TrimRight(l, "\r\n"); strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
