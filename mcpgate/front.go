package mcpgate

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// DefaultRequestBodyTimeout is how long a request's body may take to
// arrive, from the end of its headers, unless the gateway is told
// otherwise.
const DefaultRequestBodyTimeout = 30 * time.Second

// refusalGrace is how long what remains of a refused request's body has
// to arrive before the connection closes: it is read, to be discarded, so
// that the client sees the answer rather than a reset, but an
// unauthenticated client must not hold the connection with it.
const refusalGrace = time.Second

// admitRequest is the first thing the gateway does with a request, before
// it knows who sent it, so that no client — authenticated or not — holds
// a connection longer than its request needs:
//
//   - A request that declares a Content-Length over maxBytes is refused
//     with 413 before any of its body is read (a client that expects 100
//     Continue is not told to send it), and its connection is closed.
//   - The body must arrive within bodyTimeout of now. Reading it then
//     fails with an error that says so, and the server closes the
//     connection instead of waiting on it. Once the whole body is in, the
//     deadline is lifted: the response may be an event stream as long as
//     a tool call, and net/http's read of the connection while it is
//     written (watching for the client leaving) must not cut it off. A
//     request without a body gets no deadline: a GET stream lasts as
//     long as its session.
//
// maxBytes 0 means DefaultMaxMessageBytes, bodyTimeout 0
// DefaultRequestBodyTimeout. A request that has been through admitRequest
// already (a handler in front of the gateway calls it too) keeps the
// earlier of the two deadlines. admitRequest returns the request to serve
// on, whose body lifts the deadline, or false if it has answered the
// request itself.
func admitRequest(w http.ResponseWriter, r *http.Request, maxBytes int64, bodyTimeout time.Duration) (*http.Request, bool) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	if bodyTimeout <= 0 {
		bodyTimeout = DefaultRequestBodyTimeout
	}
	if r.ContentLength > maxBytes {
		closeAfterReply(w)
		writeJSONError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest,
			fmt.Sprintf("agentsec: the request declares %d bytes (Content-Length); a message may have at most %d", r.ContentLength, maxBytes))
		return r, false
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return r, true
	}
	deadline := time.Now().Add(bodyTimeout)
	if b, ok := r.Body.(*boundedBody); ok {
		if !b.lifted && deadline.Before(b.deadline) {
			b.deadline, b.timeout = deadline, bodyTimeout
			b.rc.SetReadDeadline(deadline)
		}
		return r, true
	}
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(deadline); err != nil {
		return r, true // a writer with no connection, such as a ResponseRecorder: nothing to hold
	}
	// As with http.MaxBytesReader, the body is replaced in place: the
	// server reads and closes the one it made through its own reference.
	r.Body = &boundedBody{ReadCloser: r.Body, rc: rc, deadline: deadline, timeout: bodyTimeout}
	return r, true
}

// closeAfterReply makes the server close the connection once the response
// is written, giving what remains of the request's body refusalGrace to
// arrive. A refused client, such as one without a valid token, must not
// keep its connection for the next try: idle, it would hold a file
// descriptor of the gateway for nothing.
func closeAfterReply(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(refusalGrace))
}

// A boundedBody is a request body that must arrive by a deadline, which it
// lifts at its end.
type boundedBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	deadline time.Time
	timeout  time.Duration
	lifted   bool
}

// Read reads the body, lifting the read deadline at its end, and saying
// so if it did not arrive in time.
func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.lifted:
		b.lifted = true
		b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = &BodyTimeoutError{Limit: b.timeout}
	}
	return n, err
}

// A BodyTimeoutError is the failure to read a request body that did not
// arrive within its time.
type BodyTimeoutError struct {
	Limit time.Duration // the time the body had
}

// Error says how long the body had.
func (e *BodyTimeoutError) Error() string {
	return fmt.Sprintf("the request body did not arrive within %v", e.Limit)
}

// Unwrap makes a BodyTimeoutError an os.ErrDeadlineExceeded, as the
// error it replaces was.
func (e *BodyTimeoutError) Unwrap() error { return os.ErrDeadlineExceeded }
