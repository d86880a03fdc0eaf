package mcpgate

import (
	"mime"
	"testing"
)

// FuzzMediaType holds mediaType's shortcut to mime.ParseMediaType's
// answer, for any header value.
func FuzzMediaType(f *testing.F) {
	for _, seed := range []string{"application/json", "text/event-stream", "Application/JSON",
		"application/json; charset=utf-8", "text/event-stream;q=0.9", "application/json ", "", "*/*",
		"application/json;", "application", "text/html, application/json"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		want, _, _ := mime.ParseMediaType(v)
		if got := mediaType(v); got != want {
			t.Fatalf("mediaType(%q) = %q; mime.ParseMediaType: %q", v, got, want)
		}
	})
}
