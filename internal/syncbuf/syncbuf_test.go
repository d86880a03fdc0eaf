package syncbuf

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// TestBuffer: writes from many goroutines all arrive, whole, and lines
// taken are not returned again.
func TestBuffer(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				fmt.Fprintf(&b, "g%d line %d\n", g, i)
				_ = b.String() // a reader while others write
			}
		})
	}
	wg.Wait()
	if n := len(b.Lines()); n != 800 {
		t.Fatalf("%d lines, want 800", n)
	}
	got := b.TakeLines()
	if len(got) != 800 || !slices.Contains(got, "g7 line 99") {
		t.Fatalf("TakeLines: %d lines, want 800 with g7's last", len(got))
	}
	if b.String() != "" || b.TakeLines() != nil {
		t.Fatal("lines taken are returned again")
	}
	b.Write([]byte("a\n\n  \nb"))
	if got := b.Lines(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Lines = %q, want [a b]", got)
	}
}
