package mcpgate

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// An httpSession is one MCP session over HTTP, seen by its Proxy as the
// client's connection: Read returns what the client posts, and Write
// routes each message to the HTTP response it belongs to — a request's
// answer, and what comes before it, to that request's response; anything
// else to the session's GET stream, or, when none is open, to the
// request the client opened last.
type httpSession struct {
	id, agent string
	owner     string // who may use it: see caller
	cancel    context.CancelFunc
	closed    chan struct{}
	closeOnce sync.Once
	// saved is set once the session is in the SessionStore: until then
	// the store can't vouch for it, and a refresh must not end it.
	saved atomic.Bool

	receive func(jsonrpc.Message, map[string]string) *jsonrpc.Error // the proxy's, set before the first message

	mu         sync.Mutex
	streams    map[jsonrpc.ID]*stream // requests waiting for their answer
	byToken    map[string]*stream     // the same, by progress token
	standalone *stream                // the GET stream, if open
	newest     *stream                // the request stream opened last
	active     int                    // HTTP requests in progress
	lastActive time.Time
}

// errNoStream is the failure of a message to the client while it has no
// response open to carry it.
var errNoStream = errors.New("the client has no open stream to take the message")

// stream is the queue of messages for one HTTP response, and who writes
// them. The POST handler that opened it hands the request to the proxy
// first (a tools/call is governed on its goroutine) and then writes the
// response itself; a message that comes before the answer while the
// handler is still busy — progress, or a server's request the client must
// answer for the call to finish — starts a writer goroutine, which then
// writes the whole response while the handler waits for it.
type stream struct {
	id     jsonrpc.ID // the request it answers; invalid for the GET stream
	token  string     // the request's progress token, JSON-encoded
	wake   chan struct{}
	w      http.ResponseWriter
	req    *http.Request
	jsonOK bool
	closed <-chan struct{} // the session's

	mu      sync.Mutex
	queue   []jsonrpc.Message
	done    bool          // the response is over; nothing more is taken
	dropped bool          // the request was cancelled: it gets no answer
	owner   int           // who writes: ownerNone (yet), ownerHandler, ownerWriter
	written chan struct{} // closed when the writer goroutine is finished
}

const (
	ownerNone = iota
	ownerHandler
	ownerWriter
)

func newStream() *stream { return &stream{wake: make(chan struct{}, 1)} }

// bind gives the stream the response it writes, under its lock: the
// stream is published before it is bound, and an upstream's notification
// pushed to it meanwhile starts a writer that reads these fields.
func (st *stream) bind(w http.ResponseWriter, r *http.Request, jsonOK bool, closed <-chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.w, st.req, st.jsonOK, st.closed = w, r, jsonOK, closed
}

// maxQueued bounds the messages waiting for one response's writer: a
// client that holds a stream open and never reads it must not make the
// gateway hold everything its upstreams send meanwhile (progress,
// logging). Past it, a message other than the answer is dropped, as one
// the client can't take now would be without the gateway.
const maxQueued = 1024

// push queues a message, reporting false if the response is over or its
// queue is full.
func (st *stream) push(msg jsonrpc.Message) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return false
	}
	if _, answer := msg.(*jsonrpc.Response); !answer && len(st.queue) >= maxQueued {
		return false
	}
	st.queue = append(st.queue, msg)
	select {
	case st.wake <- struct{}{}:
	default:
	}
	if _, answer := msg.(*jsonrpc.Response); !answer && st.owner == ownerNone && st.w != nil {
		st.owner, st.written = ownerWriter, make(chan struct{})
		go func() {
			defer close(st.written)
			st.write()
		}()
	}
	return true
}

func (st *stream) take() []jsonrpc.Message {
	msgs, _ := st.takeOrDropped()
	return msgs
}

// takeOrDropped takes the queue, and reports whether the request was
// dropped: its response then ends with what is queued.
func (st *stream) takeOrDropped() ([]jsonrpc.Message, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	q := st.queue
	st.queue = nil
	return q, st.dropped
}

// drop ends the response of a request that will get no answer, because
// the client cancelled it: a client that keeps its POST open must not
// hold it, and a goroutine of the gateway's, forever.
func (st *stream) drop() {
	st.mu.Lock()
	st.dropped = true
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *stream) finish() {
	st.mu.Lock()
	st.done = true
	st.mu.Unlock()
}

// touch counts an HTTP request of the session starting (+1) or ending (-1).
func (s *httpSession) touch(delta int) {
	s.mu.Lock()
	s.active += delta
	s.lastActive = time.Now()
	s.mu.Unlock()
}

func (s *httpSession) idleFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active > 0 {
		return 0
	}
	return time.Since(s.lastActive)
}

// setReceiver implements pushConn.
func (s *httpSession) setReceiver(f func(jsonrpc.Message, map[string]string) *jsonrpc.Error) {
	s.receive = f
}

// deliver hands a client message to the proxy, which handles it on this
// goroutine: a tools/call is governed before deliver returns, and
// recorded with attrs, those of the caller whose request carried it. It
// reports false if the session has ended, and the error to answer a
// notification the proxy refused with.
func (s *httpSession) deliver(msg jsonrpc.Message, attrs map[string]string) (bool, *jsonrpc.Error) {
	select {
	case <-s.closed:
		return false, nil
	default:
	}
	return true, s.receive(msg, attrs)
}

// openStream registers the response that will carry a request's answer.
func (s *httpSession) openStream(req *jsonrpc.Request) (*stream, bool) {
	st := newStream()
	st.id, st.token = req.ID, progressToken(req.Params)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.streams[req.ID]; dup {
		return nil, false
	}
	s.streams[req.ID] = st
	if st.token != "" {
		s.byToken[st.token] = st
	}
	s.newest = st
	return st, true
}

func (s *httpSession) dropStream(st *stream) {
	st.finish()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	if st.token != "" && s.byToken[st.token] == st {
		delete(s.byToken, st.token)
	}
	if s.newest == st {
		s.newest = nil
		for _, other := range s.streams {
			s.newest = other
			break
		}
	}
	if s.standalone == st {
		s.standalone = nil
	}
}

// Read implements mcp.Connection. Messages are pushed (deliver), so
// Read only waits for the session to end.
func (s *httpSession) Read(ctx context.Context) (jsonrpc.Message, error) {
	select {
	case <-s.closed:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Write implements mcp.Connection.
func (s *httpSession) Write(ctx context.Context, msg jsonrpc.Message) error {
	var st *stream
	s.mu.Lock()
	switch m := msg.(type) {
	case *jsonrpc.Response:
		st = s.streams[m.ID]
	case *jsonrpc.Request:
		if m.Method == "notifications/progress" {
			st = s.byToken[progressToken(m.Params)]
		}
		if st == nil {
			st = s.standalone
		}
		if st == nil {
			st = s.newest
		}
	}
	s.mu.Unlock()
	if st == nil || !st.push(msg) {
		if _, isResponse := msg.(*jsonrpc.Response); isResponse {
			return nil // the client left before its answer: nobody to tell
		}
		return errNoStream
	}
	return nil
}

// dropRequest implements requestDropper.
func (s *httpSession) dropRequest(id jsonrpc.ID) {
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	if st != nil {
		st.drop()
	}
}

// Close implements mcp.Connection: it ends the session.
func (s *httpSession) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

// SessionID implements mcp.Connection.
func (s *httpSession) SessionID() string { return s.id }

// serveRequest writes the response of a request the proxy has been
// handed, or waits for the writer goroutine that took it over.
func (s *httpSession) serveRequest(st *stream) {
	defer s.dropStream(st)
	st.mu.Lock()
	if st.owner == ownerWriter {
		written := st.written
		st.mu.Unlock()
		<-written
		return
	}
	st.owner = ownerHandler
	st.mu.Unlock()
	st.write()
}

// write writes the response: the answer as JSON when that is all there
// is and the client takes JSON, otherwise an event stream of everything
// routed to the stream, ending with the answer.
func (st *stream) write() {
	w := st.w
	started := false
	for {
		select {
		case <-st.wake:
		case <-st.req.Context().Done():
			return // the answer, when it comes, has nowhere to go
		case <-st.closed:
			if !started {
				writeJSONError(w, http.StatusServiceUnavailable, idJSON(st.id), codeInternal, "agentsec: the MCP session ended before answering")
			}
			return
		}
		msgs, dropped := st.takeOrDropped()
		if len(msgs) == 0 {
			if dropped {
				// No answer will come: end the response, as an event
				// stream with no answer in it.
				if !started {
					startEventStream(w)
				}
				flush(w)
				return
			}
			continue
		}
		if resp, ok := msgs[0].(*jsonrpc.Response); ok && !started && len(msgs) == 1 && st.jsonOK {
			data, err := encodeMessage(resp)
			if err != nil {
				writeJSONError(w, http.StatusInternalServerError, idJSON(st.id), codeInternal, "agentsec: "+err.Error())
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(data)
			return
		}
		if !started {
			startEventStream(w)
			started = true
		}
		for _, msg := range msgs {
			if writeEvent(w, msg) != nil {
				return
			}
			if _, ok := msg.(*jsonrpc.Response); ok {
				flush(w)
				return
			}
		}
		flush(w)
	}
}

// keepAlive is how often an idle GET stream carries a comment, so that
// proxies between the client and the gateway keep it open.
const keepAlive = 25 * time.Second

// serveStandalone serves the session's GET stream, for messages that
// belong to no request, until the client leaves or the session ends.
func (s *httpSession) serveStandalone(w http.ResponseWriter, r *http.Request) {
	st := newStream()
	st.owner = ownerHandler
	s.mu.Lock()
	if s.standalone != nil {
		s.mu.Unlock()
		http.Error(w, "agentsec: this session's GET stream is open already", http.StatusConflict)
		return
	}
	s.standalone = st
	s.mu.Unlock()
	defer s.dropStream(st)
	startEventStream(w)
	flush(w)
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-st.wake:
		case <-tick.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flush(w)
			continue
		case <-r.Context().Done():
			return
		case <-s.closed:
			return
		}
		for _, msg := range st.take() {
			if writeEvent(w, msg) != nil {
				return
			}
		}
		flush(w)
	}
}

func startEventStream(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-transform")
	w.WriteHeader(http.StatusOK)
}

// writeEvent writes one message as a server-sent event. JSON-RPC
// encoding has no raw newlines, so the message fits one data line.
func writeEvent(w http.ResponseWriter, msg jsonrpc.Message) error {
	data, err := encodeMessage(msg)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, len(data)+24)
	buf = append(buf, "event: message\ndata: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	_, err = w.Write(buf)
	return err
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}
