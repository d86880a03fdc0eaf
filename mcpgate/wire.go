package mcpgate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// The gateway decodes and encodes JSON-RPC messages itself, into and from
// the SDK's jsonrpc types: the SDK's own decoder allocates a large buffer
// for every message, which was most of the gateway's garbage. The rules
// are the SDK's: "jsonrpc" must be "2.0"; a message with a "method" key
// is a request (a notification without an id); one without is a response
// and needs an id; an id is a string or an integer.

var (
	errNotJSONRPC = errors.New(`"jsonrpc" must be "2.0"`)
	errBadID      = errors.New("the id must be a string or an integer")
	errNoID       = errors.New("a response needs an id")
	errBadMethod  = errors.New("the method must be a string")
)

// decodeMessage decodes one JSON-RPC message. Keys are matched exactly:
// Go's decoder would also take "Method" or "NAME" for a field, where the
// servers behind the gateway read only the exact key, and a message must
// mean to the gateway what it means to them.
func decodeMessage(data []byte) (jsonrpc.Message, error) {
	m, err := decodeObject(data)
	if err != nil {
		return nil, err
	}
	if m == nil || string(m["jsonrpc"]) != `"2.0"` {
		return nil, errNotJSONRPC
	}
	id, err := decodeID(m["id"])
	if err != nil {
		return nil, err
	}
	if raw, ok := m["method"]; ok {
		var method string
		if err := json.Unmarshal(raw, &method); err != nil {
			return nil, errBadMethod
		}
		return &jsonrpc.Request{ID: id, Method: method, Params: nullIsAbsent(m["params"])}, nil
	}
	if !id.IsValid() {
		return nil, errNoID
	}
	resp := &jsonrpc.Response{ID: id, Result: nullIsAbsent(m["result"])}
	if raw := nullIsAbsent(m["error"]); raw != nil {
		var we jsonrpc.Error
		if err := json.Unmarshal(raw, &we); err != nil {
			return nil, fmt.Errorf("malformed error: %w", err)
		}
		resp.Error = &we
	}
	return resp, nil
}

// object decodes a JSON object with its keys exactly as they are; nil if
// raw is not an object. raw is a value of a message decodeMessage or the
// SDK decoded, and so valid JSON: it is split, not checked or copied
// again (validObject) — a request's params are read several times.
func object(raw json.RawMessage) map[string]json.RawMessage {
	m, err := validObject(raw)
	if err != nil {
		return nil
	}
	return m
}

// stringField is an object's string under exactly key, or "".
func stringField(m map[string]json.RawMessage, key string) string {
	s, _ := stringValue(m[key])
	return s
}

func nullIsAbsent(raw json.RawMessage) json.RawMessage {
	if string(raw) == "null" {
		return nil
	}
	return raw
}

// decodeID reads an id: absent or null is no id. An id comes back to its
// sender exactly as it was sent (appendID), byte for byte: the SDK's ID
// holds only a string or an int64, and a number it can't hold exactly —
// beyond ±2^53, or written as 1.0 or 1e3 — is kept as its text, in a
// string ID marked with rawNumberID. A client's string that happens to
// start with the mark is itself marked (quotedID), so no string a client
// sends is ever written back as anything but that string.
func decodeID(raw json.RawMessage) (jsonrpc.ID, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return jsonrpc.ID{}, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return jsonrpc.ID{}, errBadID
		}
		if strings.HasPrefix(s, idMark) {
			s = quotedID + s
		}
		return jsonrpc.MakeID(s)
	}
	if !integralNumber(raw) {
		return jsonrpc.ID{}, errBadID
	}
	if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil && n >= -maxExactID && n <= maxExactID &&
		strconv.FormatInt(n, 10) == string(raw) {
		return jsonrpc.MakeID(float64(n))
	}
	return jsonrpc.MakeID(rawNumberID + string(raw))
}

// The marks of ids kept as text (decodeID). NUL can't start a JSON-RPC
// id any client means, and the marks are never written out.
const (
	idMark      = "\x00"
	rawNumberID = idMark + "n:" // the rest is a JSON number, as sent
	quotedID    = idMark + "s:" // the rest is the client's string
)

// maxExactID is the largest integer a float64 holds exactly, which is
// what jsonrpc.MakeID takes.
const maxExactID = 1 << 53

// maxNumberID bounds the text of a numeric id.
const maxNumberID = 64

// integralNumber reports whether raw is a JSON number of at most
// maxNumberID bytes whose value is an integer: 7, -0, 1.0, 1e3 and
// 123456789012345678901234567890 are; 1.5 and 1e-3 are not.
func integralNumber(raw []byte) bool {
	if len(raw) == 0 || len(raw) > maxNumberID || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) || !json.Valid(raw) {
		return false
	}
	s := string(raw)
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil {
			return false
		}
		s, exp = s[:i], e
	}
	_, frac, _ := strings.Cut(s, ".")
	frac = strings.TrimRight(frac, "0")
	if strings.Trim(strings.TrimPrefix(s, "-"), "0.") == "" {
		return true // zero, however written
	}
	return exp >= len(frac)
}

// encodeMessage encodes one JSON-RPC message on one line: params and
// results are copied as they are, compacted only if they hold a line
// break, so that a message fits one line of stdio or one data line of an
// event stream.
func encodeMessage(msg jsonrpc.Message) ([]byte, error) {
	buf := make([]byte, 0, 128+messageSize(msg))
	buf = append(buf, `{"jsonrpc":"2.0"`...)
	var err error
	switch m := msg.(type) {
	case *jsonrpc.Request:
		if m.ID.IsValid() {
			buf = appendID(append(buf, `,"id":`...), m.ID)
		}
		buf = append(buf, `,"method":`...)
		buf = appendString(buf, m.Method)
		if len(m.Params) > 0 {
			if buf, err = appendRaw(append(buf, `,"params":`...), m.Params); err != nil {
				return nil, err
			}
		}
	case *jsonrpc.Response:
		buf = appendID(append(buf, `,"id":`...), m.ID)
		if m.Error != nil {
			var we *jsonrpc.Error
			if !errors.As(m.Error, &we) {
				we = &jsonrpc.Error{Code: codeInternal, Message: m.Error.Error()}
			}
			b, err := json.Marshal(we)
			if err != nil {
				return nil, err
			}
			buf = append(append(buf, `,"error":`...), b...)
		} else {
			result := m.Result
			if len(result) == 0 {
				result = json.RawMessage("{}")
			}
			if buf, err = appendRaw(append(buf, `,"result":`...), result); err != nil {
				return nil, err
			}
		}
	default:
		return nil, errors.New("not a JSON-RPC message")
	}
	return append(buf, '}'), nil
}

func messageSize(msg jsonrpc.Message) int {
	switch m := msg.(type) {
	case *jsonrpc.Request:
		return len(m.Method) + len(m.Params)
	case *jsonrpc.Response:
		return len(m.Result)
	}
	return 0
}

// appendID appends an id as decodeID read it.
func appendID(buf []byte, id jsonrpc.ID) []byte {
	switch v := id.Raw().(type) {
	case int64:
		return strconv.AppendInt(buf, v, 10)
	case string:
		if num, ok := strings.CutPrefix(v, rawNumberID); ok && integralNumber([]byte(num)) {
			return append(buf, num...)
		}
		if s, ok := strings.CutPrefix(v, quotedID); ok {
			return appendString(buf, s)
		}
		return appendString(buf, v)
	}
	return append(buf, "null"...)
}

// idJSON is an id as JSON, or nil for no id.
func idJSON(id jsonrpc.ID) json.RawMessage {
	if !id.IsValid() {
		return nil
	}
	return appendID(nil, id)
}

func appendString(buf []byte, s string) []byte {
	if plainString([]byte(s)) {
		return append(append(append(buf, '"'), s...), '"')
	}
	b, _ := json.Marshal(s)
	return append(buf, b...)
}

// appendRaw appends a JSON value the gateway decoded, so known to be
// valid, compacting it only if it spans lines.
func appendRaw(buf []byte, raw json.RawMessage) ([]byte, error) {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return append(buf, raw...), nil
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return nil, err
	}
	return append(buf, out.Bytes()...), nil
}
