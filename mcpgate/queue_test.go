package mcpgate

import (
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// A response's queue holds at most maxQueued messages besides its answer:
// a client that never reads its stream can't make the gateway hold what
// its upstreams send without end, and never loses the answer for it.
func TestStreamQueueBounded(t *testing.T) {
	st := newStream() // no writer: nothing leaves the queue
	note := &jsonrpc.Request{Method: "notifications/progress"}
	for i := range maxQueued {
		if !st.push(note) {
			t.Fatalf("notification %d of %d refused", i+1, maxQueued)
		}
	}
	if st.push(note) {
		t.Error("a notification past maxQueued was queued")
	}
	id, _ := jsonrpc.MakeID(float64(1))
	if !st.push(&jsonrpc.Response{ID: id}) {
		t.Error("the answer was refused by a full queue")
	}
	if n := len(st.take()); n != maxQueued+1 {
		t.Errorf("%d messages queued, want %d", n, maxQueued+1)
	}
}
