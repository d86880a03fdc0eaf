package mcpgate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// upstreamHTTP is the HTTP client of every streamable-HTTP upstream: one
// pool of keep-alive connections shared by all sessions, large enough
// that concurrent calls don't re-dial (http.DefaultTransport keeps two
// idle connections per host).
//
// Requests go straight to the transport: an MCP endpoint doesn't
// redirect, and http.Client would copy every request's headers in case
// it did.
var upstreamHTTP http.RoundTripper = &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ForceAttemptHTTP2:     true,
	MaxIdleConns:          1024,
	MaxIdleConnsPerHost:   256,
	IdleConnTimeout:       90 * time.Second,
	TLSHandshakeTimeout:   10 * time.Second,
	ResponseHeaderTimeout: 0, // a call may take long; Upstream.Timeout bounds it
}

// maxUpstreamMessage bounds one message from an upstream server.
const maxUpstreamMessage = 64 << 20

// HTTPUpstream is an upstream that speaks streamable HTTP at endpoint,
// with connections from a pool shared by all sessions.
//
// Each request is a POST of its own, answered with JSON or an event
// stream; notifications and responses are POSTed in order before the
// next message goes. After initialize, a GET stream carries what the
// server sends outside any request, reopened if it drops. A server that
// no longer knows the session (404) ends the connection, and the gateway
// reconnects and initializes afresh.
func HTTPUpstream(name, endpoint string, timeout time.Duration) Upstream {
	return Upstream{Name: name, Timeout: timeout, Connect: func(context.Context) (mcp.Connection, error) {
		return newHTTPUpstreamConn(name, endpoint, upstreamHTTP), nil
	}}
}

// httpUpstreamConn is one MCP session with a streamable-HTTP server.
type httpUpstreamConn struct {
	name     string // the upstream's, for errors
	endpoint string
	client   http.RoundTripper
	ctx      context.Context // ends with the connection
	cancel   context.CancelFunc
	incoming chan jsonrpc.Message
	failed   chan struct{}
	failOnce sync.Once
	failErr  error

	mu            sync.Mutex
	sessionID     string
	version       string   // the negotiated protocol version, once initialized
	sessionHeader []string // the header values of sessionID and version, made once
	versionHeader []string
	getStarted    bool
	deleted       bool // Close sent the session's DELETE
}

func newHTTPUpstreamConn(name, endpoint string, client http.RoundTripper) *httpUpstreamConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &httpUpstreamConn{name: name, endpoint: endpoint, client: client, ctx: ctx, cancel: cancel,
		incoming: make(chan jsonrpc.Message, 16), failed: make(chan struct{})}
}

// fail ends the connection with err; Read returns it.
func (c *httpUpstreamConn) fail(err error) {
	c.failOnce.Do(func() {
		c.failErr = err
		close(c.failed)
		c.cancel()
	})
}

// Read implements mcp.Connection.
func (c *httpUpstreamConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	select {
	case msg := <-c.incoming:
		return msg, nil
	case <-c.failed:
		return nil, c.failErr
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *httpUpstreamConn) deliver(msg jsonrpc.Message) bool {
	select {
	case c.incoming <- msg:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// Write implements mcp.Connection. A request's POST runs on its own, and
// its answer comes through Read; any failure of it comes back as an
// error response, so the request is always answered.
func (c *httpUpstreamConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	data, err := encodeMessage(msg)
	if err != nil {
		return err
	}
	if req, ok := msg.(*jsonrpc.Request); ok && req.IsCall() {
		go c.call(req, data)
		return nil
	}
	resp, err := c.post(ctx, msg, data)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		return c.statusError(resp)
	}
	return nil
}

// post sends one message.
func (c *httpUpstreamConn) post(ctx context.Context, msg jsonrpc.Message, data []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	h := req.Header
	h["Content-Type"] = jsonContentType
	h["Accept"] = postAccept
	if c.setSessionHeaders(h) >= sessionlessVersion {
		// The sessionless protocol repeats the method and the name in
		// headers, for routing without reading bodies.
		if r, ok := msg.(*jsonrpc.Request); ok {
			h["Mcp-Method"] = []string{r.Method}
			if name := requestName(r); name != "" {
				h["Mcp-Name"] = []string{name}
			}
		}
	}
	resp, err := c.client.RoundTrip(req)
	if err != nil {
		err = fmt.Errorf("could not be reached: %w", err)
		if dial, ok := errors.AsType[*net.OpError](err); ok && dial.Op == "dial" {
			return nil, unsent(err) // no connection: the server never saw it
		}
		return nil, err
	}
	c.noteSession(resp)
	return resp, nil
}

// Header values every POST carries, shared by all: a request's header
// is only read on its way out, and each has no room to append in place.
var (
	jsonContentType = []string{"application/json"}
	postAccept      = []string{"application/json, text/event-stream"}
)

// setSessionHeaders sets the session's headers and returns its protocol
// version.
func (c *httpUpstreamConn) setSessionHeaders(h http.Header) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sessionID != "" {
		h["Mcp-Session-Id"] = c.sessionHeader
	}
	if c.version != "" {
		h["Mcp-Protocol-Version"] = c.versionHeader
	}
	return c.version
}

// sessionlessVersion is the first protocol version without sessions.
const sessionlessVersion = "2026-07-28"

// noteSession learns the session id from the server's first answer that
// names one.
func (c *httpUpstreamConn) noteSession(resp *http.Response) {
	id := resp.Header.Get("Mcp-Session-Id")
	if id == "" {
		return
	}
	c.mu.Lock()
	if c.sessionID == "" {
		c.sessionID, c.sessionHeader = id, []string{id}
	}
	c.mu.Unlock()
}

// requestName is the name the sessionless protocol's Mcp-Name header
// carries: the tool's, the prompt's, or the resource's URI.
func requestName(r *jsonrpc.Request) string {
	switch r.Method {
	case "tools/call", "prompts/get":
		return stringField(object(r.Params), "name")
	case "resources/read":
		return stringField(object(r.Params), "uri")
	}
	return ""
}

// call POSTs one request and delivers what comes back, ending with its
// answer — the server's, or an error saying why there is none.
func (c *httpUpstreamConn) call(req *jsonrpc.Request, data []byte) {
	resp, err := c.do(c.ctx, req, data)
	if err != nil {
		resp = &jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: codeInternal,
			Message: (&upstreamError{c.name, err}).Error()}}
	}
	c.deliver(resp)
}

// roundTrip implements roundTripper.
func (c *httpUpstreamConn) roundTrip(ctx context.Context, req *jsonrpc.Request) (*jsonrpc.Response, error) {
	data, err := encodeMessage(req)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, req, data)
}

// do POSTs one request and returns its answer; what the server sends
// before the answer is delivered through Read. The answer is returned
// as soon as it is read: the end of an event stream, which a server may
// send later, or never, is read in the background.
//
// The POST ends with the connection, or with ctx until do returns.
func (c *httpUpstreamConn) do(ctx context.Context, req *jsonrpc.Request, data []byte) (*jsonrpc.Response, error) {
	pctx, cancel := context.WithCancel(c.ctx)
	detach := context.AfterFunc(ctx, cancel)
	resp, err := c.post(pctx, req, data)
	if err != nil {
		detach()
		cancel()
		return nil, err
	}
	background := false
	defer func() {
		detach() // from here the caller's ctx no longer ends the POST
		if background {
			go finishStream(resp, cancel)
			return
		}
		drain(resp)
		cancel()
	}()
	if resp.StatusCode == http.StatusNotFound && c.hasSession() {
		err := errors.New("no longer knows the MCP session")
		c.fail(err)
		return nil, err
	}
	ct := mediaType(resp.Header.Get("Content-Type"))
	switch {
	case resp.StatusCode/100 != 2 && ct != "application/json":
		return nil, c.statusError(resp)
	case ct == "text/event-stream":
		background = true
		answer, err := c.readEvents(resp.Body, req)
		if err == nil && answer == nil {
			err = errors.New("ended its response stream without answering")
		}
		return answer, err
	case ct == "application/json":
		body, err := readBody(resp.Body, resp.ContentLength, maxUpstreamMessage)
		if err != nil {
			return nil, fmt.Errorf("answer could not be read: %w", err)
		}
		if len(body) > maxUpstreamMessage {
			return nil, fmt.Errorf("answered with more than %d bytes", maxUpstreamMessage)
		}
		msg, err := decodeMessage(body)
		if err != nil {
			return nil, fmt.Errorf("answered with a malformed message: %v", err)
		}
		r, ok := msg.(*jsonrpc.Response)
		if !ok || r.ID != req.ID {
			return nil, errors.New("answered with a message that is not the request's answer")
		}
		c.answered(req, r)
		return r, nil
	default:
		return nil, fmt.Errorf("answered HTTP %d with Content-Type %q", resp.StatusCode, ct)
	}
}

// answered notes what initialize settled: the protocol version for later
// requests' headers, and the GET stream it opens.
func (c *httpUpstreamConn) answered(req *jsonrpc.Request, resp *jsonrpc.Response) {
	if req.Method != "initialize" || resp.Error != nil {
		return
	}
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	json.Unmarshal(resp.Result, &r)
	c.mu.Lock()
	c.version, c.versionHeader = r.ProtocolVersion, []string{r.ProtocolVersion}
	start := !c.getStarted && c.sessionID != ""
	c.getStarted = c.getStarted || start
	c.mu.Unlock()
	if start {
		go c.listen()
	}
}

func (c *httpUpstreamConn) hasSession() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionID != ""
}

// readEvents delivers the messages of an event stream until the answer
// to req, which it returns, or the end. For the GET stream req is nil.
func (c *httpUpstreamConn) readEvents(body io.Reader, req *jsonrpc.Request) (*jsonrpc.Response, error) {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(body)
	defer func() {
		br.Reset(nil)
		readerPool.Put(br)
	}()
	var data []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long line: gather it whole.
			full := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				full = append(full, line...)
				if len(full) > maxUpstreamMessage {
					return nil, fmt.Errorf("sent an event of more than %d bytes", maxUpstreamMessage)
				}
			}
			line = full
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, nil
			}
			return nil, fmt.Errorf("response stream broke: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 { // the event is complete
			if len(data) == 0 {
				continue
			}
			msg, derr := decodeMessage(data)
			data = data[:0]
			if derr != nil {
				continue // not a JSON-RPC message: not ours to relay
			}
			if r, ok := msg.(*jsonrpc.Response); ok && req != nil && r.ID == req.ID {
				c.answered(req, r)
				return r, nil
			}
			if !c.deliver(msg) {
				return nil, errSessionEnded
			}
			continue
		}
		if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			v = bytes.TrimPrefix(v, []byte(" "))
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, v...)
		}
		// event:, id:, retry: and comments need nothing: every event is
		// a message, and streams are not resumed.
	}
}

// readerPool holds the buffered readers of event streams.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// listen holds the session's GET stream open while the connection lives,
// reopening it a second after it drops. A server that offers none (405)
// is not asked again.
func (c *httpUpstreamConn) listen() {
	for c.ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(c.ctx, http.MethodGet, c.endpoint, nil)
		req.Header["Accept"] = []string{"text/event-stream"}
		c.setSessionHeaders(req.Header)
		resp, err := c.client.RoundTrip(req)
		if err == nil {
			ct := mediaType(resp.Header.Get("Content-Type"))
			switch {
			case resp.StatusCode == http.StatusNotFound:
				drain(resp)
				c.fail(errors.New("no longer knows the MCP session"))
				return
			case resp.StatusCode == http.StatusOK && ct == "text/event-stream":
				c.readEvents(resp.Body, nil)
				drain(resp)
			default: // 405 and the like: no GET stream here
				drain(resp)
				return
			}
		}
		select {
		case <-c.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// statusError describes an HTTP answer that is not a message.
func (c *httpUpstreamConn) statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := strings.TrimSpace(string(body))
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if msg == "" {
		return fmt.Errorf("answered HTTP %d", resp.StatusCode)
	}
	return fmt.Errorf("answered HTTP %d: %s", resp.StatusCode, msg)
}

// Close implements mcp.Connection: it ends the session at the server
// (DELETE), waiting at most two seconds for that.
func (c *httpUpstreamConn) Close() error {
	c.mu.Lock()
	id := c.sessionID
	deleted := c.deleted
	c.deleted = true
	c.mu.Unlock()
	c.fail(io.EOF)
	if id == "" || deleted {
		return nil // the session is ended once
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.endpoint, nil)
	if err != nil {
		return err
	}
	c.setSessionHeaders(req.Header)
	if resp, err := c.client.RoundTrip(req); err == nil {
		drain(resp)
	}
	return nil
}

// SessionID implements mcp.Connection.
func (c *httpUpstreamConn) SessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionID
}

// readBody reads a body of at most max bytes (returning max+1 bytes if
// it is longer), in one allocation when its length is known and at most
// preallocMax. A longer declared length is not allocated ahead of the
// bytes: a client could declare megabytes on many connections and send
// nothing. A body shorter than its declared length is io.ErrUnexpectedEOF.
func readBody(r io.Reader, length int64, max int) ([]byte, error) {
	switch {
	case length < 0 || length > int64(max):
		return io.ReadAll(io.LimitReader(r, int64(max)+1))
	case length <= preallocMax:
		buf := make([]byte, length)
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	buf := bytes.NewBuffer(make([]byte, 0, preallocMax))
	n, err := buf.ReadFrom(io.LimitReader(r, length))
	if err == nil && n < length {
		err = io.ErrUnexpectedEOF
	}
	return buf.Bytes(), err
}

// preallocMax is the most readBody allocates for a body before its bytes
// arrive.
const preallocMax = 64 << 10

// streamGrace is how long a server may take to end an event stream after
// the answer it carried, before its connection is given up.
const streamGrace = 5 * time.Second

// finishStream reads what is left of an event stream whose answer has
// been read, so that its connection carries later requests. The caller
// has its answer, and its context no longer ends the POST: a server that
// has not ended the stream within streamGrace loses the connection
// instead (cancel).
func finishStream(resp *http.Response, cancel context.CancelFunc) {
	t := time.AfterFunc(streamGrace, cancel)
	drain(resp)
	t.Stop()
	cancel()
}

// drain reads what is left of a body, so its connection can be reused.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
