package mcpgate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// DefaultMaxMessageBytes bounds one message from a client unless the
// gateway says otherwise.
const DefaultMaxMessageBytes = 4 << 20

// NewStdioConn returns a connection that reads newline-delimited JSON-RPC
// messages from r and writes them to w, as MCP's stdio transport does.
// Unlike a plain transport it keeps going after bad input: a line that is
// not JSON gets a parse error (-32700), one that is not a JSON-RPC
// message, or is a batch, gets an invalid-request error (-32600), and a
// line over maxBytes (0 means DefaultMaxMessageBytes) is skipped with an
// invalid-request error — each answered on w, and the session goes on.
func NewStdioConn(r io.Reader, w io.Writer, maxBytes int) mcp.Connection {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	c := &stdioConn{w: w, incoming: make(chan jsonrpc.Message), closed: make(chan struct{}), done: make(chan struct{})}
	go c.read(bufio.NewReaderSize(r, 64<<10), maxBytes)
	return c
}

type stdioConn struct {
	writeMu  sync.Mutex
	w        io.Writer
	incoming chan jsonrpc.Message
	done     chan struct{} // closed when the reader reaches the end
	readErr  error
	closed   chan struct{}
	once     sync.Once
}

func (c *stdioConn) read(br *bufio.Reader, maxBytes int) {
	defer close(c.done)
	for {
		line, tooLong, err := readLine(br, maxBytes)
		if tooLong {
			c.writeRaw(errorFrame(nil, codeInvalidRequest, fmt.Sprintf("agentsec: message larger than %d bytes", maxBytes)))
		} else if len(line) > 0 {
			if msg, reply := decodeFrame(line, stdioFraming); reply != nil {
				c.writeRaw(reply)
			} else if msg != nil {
				select {
				case c.incoming <- msg:
				case <-c.closed:
					return
				}
			}
		}
		if err != nil {
			c.readErr = err
			return
		}
	}
}

// readLine reads one line without its line ending. A line longer than
// max is read to its end and dropped, reporting tooLong.
func readLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > max+2 { // +2: the line ending
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, true, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) > max {
			return nil, true, err
		}
		return line, false, err
	}
}

// How each transport asks for one message where a client sent a batch.
const (
	stdioFraming = "send one message per line"
	httpFraming  = "POST one message per request"
)

// decodeFrame decodes one frame of a transport — a line, a request body:
// a message, or the error reply that says why it is not one, in the
// transport's words (framing). A blank frame is neither.
func decodeFrame(line []byte, framing string) (jsonrpc.Message, []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil, nil
	}
	msg, err := decodeMessage(line)
	switch {
	case err == nil:
	case !json.Valid(line):
		return nil, errorFrame(nil, jsonrpc.CodeParseError, "agentsec: the message is not valid JSON")
	case line[0] == '[':
		return nil, errorFrame(nil, codeInvalidRequest, "agentsec: JSON-RPC batches are not supported (MCP removed them); "+framing)
	default:
		var probe struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(line, &probe)
		return nil, errorFrame(validID(probe.ID), codeInvalidRequest, "agentsec: not a JSON-RPC 2.0 message: "+err.Error())
	}
	if req, ok := msg.(*jsonrpc.Request); ok && req.Method == "" {
		return nil, errorFrame(validID(idJSON(req.ID)), codeInvalidRequest, "agentsec: a request needs a method")
	}
	return msg, nil
}

// validID returns a raw id if it is a string or a number, for an error
// reply to name; otherwise nil, and the reply's id is null.
func validID(raw json.RawMessage) json.RawMessage {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	switch v.(type) {
	case string, float64:
		return raw
	}
	return nil
}

// errorFrame is a JSON-RPC error response line.
func errorFrame(id json.RawMessage, code int64, msg string) []byte {
	if id == nil {
		id = json.RawMessage("null")
	}
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   jsonrpc.Error   `json:"error"`
	}{"2.0", id, jsonrpc.Error{Code: code, Message: msg}})
	return append(b, '\n')
}

func (c *stdioConn) writeRaw(b []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	_, err := c.w.Write(b)
	return err
}

// Read implements mcp.Connection.
func (c *stdioConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	select {
	case msg := <-c.incoming:
		return msg, nil
	case <-c.done:
		if c.readErr != nil && !errors.Is(c.readErr, io.EOF) {
			return nil, c.readErr
		}
		return nil, io.EOF
	case <-c.closed:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Write implements mcp.Connection.
func (c *stdioConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	data, err := encodeMessage(msg)
	if err != nil {
		return err
	}
	return c.writeRaw(append(data, '\n'))
}

// Close implements mcp.Connection. It stops reading; the reader and
// writer themselves belong to the caller.
func (c *stdioConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// SessionID implements mcp.Connection.
func (c *stdioConn) SessionID() string { return "" }
