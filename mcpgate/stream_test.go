package mcpgate

import (
	"bytes"
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// A POST's stream is given its response while an upstream's notification
// may already be pushing to it: the writer the push starts must see the
// response whole. (go test -race found bind writing the stream's fields
// without its lock while a writer read them.)
func TestStreamBoundWhilePushed(t *testing.T) {
	for range 200 {
		st := newStream()
		closed := make(chan struct{})
		pushed := make(chan struct{})
		go func() {
			st.push(&jsonrpc.Request{Method: "notifications/message"})
			close(pushed)
		}()
		st.bind(httptest.NewRecorder(), httptest.NewRequest("POST", "/", nil), false, closed)
		<-pushed
		close(closed)
		st.mu.Lock()
		written := st.written
		st.mu.Unlock()
		if written != nil {
			<-written
		}
	}
}

// A declared length is not allocated before the bytes come: a client
// that declares 4 MiB and sends one byte costs the gateway what it sent,
// not what it declared.
func TestReadBodyAllocatesWhatArrives(t *testing.T) {
	const declared = 4 << 20
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readBody(iotest.OneByteReader(bytes.NewReader([]byte("{"))), declared, declared)
	runtime.ReadMemStats(&after)
	if err != io.ErrUnexpectedEOF {
		t.Errorf("readBody of 1 byte of a declared %d = %v, want io.ErrUnexpectedEOF", declared, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("readBody allocated %d bytes for 1 byte received", grew)
	}
	body, err := readBody(bytes.NewReader(bytes.Repeat([]byte("x"), declared)), declared, declared)
	if err != nil || len(body) != declared {
		t.Errorf("readBody of a whole %d-byte body = %d bytes, %v", declared, len(body), err)
	}
}

// The URIs a session remembers the upstream of are bounded in bytes, not
// only in number: reads of URIs of a megabyte each keep at most
// maxOwnedBytes of them.
func TestOwnedURIsBounded(t *testing.T) {
	var o resourceOwners
	u := &upstreamConn{}
	for i := range 64 {
		o.set(strings.Repeat("x", 1<<20-1)+string(rune('A'+i)), u)
	}
	if o.uriBytes > maxOwnedBytes || len(o.byURI) != maxOwnedBytes/(1<<20) {
		t.Errorf("64 URIs of 1 MiB: %d remembered, %d bytes; want %d, at most %d", len(o.byURI), o.uriBytes, maxOwnedBytes/(1<<20), maxOwnedBytes)
	}
	o.set("short://one", u)
	if o.get("short://one") != nil {
		t.Error("a URI past the bytes' bound was remembered")
	}
}
