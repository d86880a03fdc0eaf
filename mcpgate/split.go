package mcpgate

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"unicode/utf8"
)

// splitObject decodes a JSON object into its members, keys exactly as
// they are, as json.Unmarshal into a map[string]json.RawMessage does —
// the last of a repeated key wins, values are their bytes as written —
// but without Go's reflective decoder: after json.Valid it only finds
// where each member begins and ends. It reports false, and the caller
// decodes the slow way, for anything but a valid object whose keys hold
// no escapes and are valid UTF-8, so the two can differ in nothing. The
// values share one copy of data: the caller's buffer may be reused.
func splitObject(data []byte) (map[string]json.RawMessage, bool) {
	data = bytes.TrimLeft(data, " \t\r\n")
	if len(data) == 0 || data[0] != '{' || !json.Valid(data) {
		return nil, false
	}
	return members(bytes.Clone(data))
}

// members splits data, a valid JSON object, into its members, values
// sharing data; false if a key holds an escape or is not valid UTF-8.
// Given anything but valid JSON it reports false or splits it as well as
// it can, and never reads past data's end: validObject trusts its input.
func members(data []byte) (map[string]json.RawMessage, bool) {
	m := make(map[string]json.RawMessage, 8)
	i := skipSpace(data, 1)
	if i < len(data) && data[i] == '}' {
		return m, true
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return nil, false
		}
		end := i + 1
		for end < len(data) && data[end] != '"' {
			if data[end] == '\\' {
				return nil, false
			}
			end++
		}
		if end >= len(data) || !utf8.Valid(data[i+1:end]) {
			return nil, false // Go's decoder would replace the bad bytes
		}
		key := internKey(data[i+1 : end])
		i = skipSpace(data, end+1)
		if i >= len(data) || data[i] != ':' {
			return nil, false
		}
		i = skipSpace(data, i+1)
		vend := skipValue(data, i)
		if vend <= i || vend > len(data) {
			return nil, false
		}
		m[key] = json.RawMessage(data[i:vend:vend])
		i = skipSpace(data, vend)
		switch {
		case i >= len(data):
			return nil, false
		case data[i] == '}':
			return m, true
		case data[i] != ',':
			return nil, false
		}
		i = skipSpace(data, i+1)
	}
}

// internKey is b as a string: for the keys of MCP's messages, a constant,
// so that splitting a message makes no string for each of them.
func internKey(b []byte) string {
	switch string(b) { // compared without a copy
	case "jsonrpc":
		return "jsonrpc"
	case "id":
		return "id"
	case "method":
		return "method"
	case "params":
		return "params"
	case "result":
		return "result"
	case "error":
		return "error"
	case "name":
		return "name"
	case "arguments":
		return "arguments"
	case "_meta":
		return "_meta"
	case "content":
		return "content"
	case "structuredContent":
		return "structuredContent"
	case "isError":
		return "isError"
	case "type":
		return "type"
	case "text":
		return "text"
	}
	return string(b)
}

// joinObject encodes members as a JSON object, the inverse of
// splitObject: keys in order, as json.Marshal orders them, and each
// value as it is, which must be valid JSON.
func joinObject(members map[string]json.RawMessage) []byte {
	keys := make([]string, 0, len(members))
	n := 2
	for k, v := range members {
		keys = append(keys, k)
		n += len(k) + len(v) + 4
	}
	slices.Sort(keys)
	buf := make([]byte, 0, n)
	buf = append(buf, '{')
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendString(buf, k)
		buf = append(buf, ':')
		buf = append(buf, members[k]...)
	}
	return append(buf, '}')
}

// elements splits data, a valid JSON array, into its elements, which
// share data.
func elements(data []byte) []json.RawMessage {
	var out []json.RawMessage
	i := skipSpace(data, 1)
	if data[i] == ']' {
		return out
	}
	for {
		end := skipValue(data, i)
		out = append(out, json.RawMessage(data[i:end:end]))
		i = skipSpace(data, end)
		if data[i] == ']' {
			return out
		}
		i = skipSpace(data, i+1) // past ','
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	return i
}

// skipValue returns where the valid JSON value at data[i] ends.
func skipValue(data []byte, i int) int {
	depth := 0
	for ; i < len(data); i++ {
		switch data[i] {
		case '"':
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\r', '\n', ':':
			if depth == 0 {
				return i
			}
		default:
			if depth == 0 {
				// A number or a literal: it ends at a delimiter.
				for i < len(data) && !endsLiteral(data[i]) {
					i++
				}
				return i
			}
		}
	}
	return i
}

func endsLiteral(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\r', '\n':
		return true
	}
	return false
}

// decodeObject decodes a JSON object into its members, keys exactly as
// they are; nil, without error, for null.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	if m, ok := splitObject(data); ok {
		return m, nil
	}
	return slowObject(data)
}

// validObject is decodeObject for a value of a decoded message: valid
// JSON, not shared with the caller's buffer, so neither checked nor
// copied again. (Given invalid JSON it never panics; what it returns then
// is unspecified.)
func validObject(raw json.RawMessage) (map[string]json.RawMessage, error) {
	switch {
	case len(raw) == 0:
		// An absent member, as a request's _meta usually is: the error
		// json.Unmarshal would make, without making it each time.
		return nil, errNoValue
	case raw[0] == '{':
		if m, ok := members(raw); ok {
			return m, nil
		}
	}
	return slowObject(raw)
}

// errNoValue is json.Unmarshal's error for no input.
var errNoValue = errors.New("unexpected end of JSON input")

// plainString reports whether b, between quotes, is a JSON string that
// means its own bytes: no escapes, no control characters, valid UTF-8.
func plainString(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c == '"' || c < 0x20 {
			return false
		}
	}
	return utf8.Valid(b)
}

func slowObject(data []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := json.Unmarshal(data, &m)
	return m, err
}

// stringValue decodes raw as json.Unmarshal into a string does: absent
// is an error, null is "". A plain string — no escapes, valid UTF-8 —
// is taken as it is.
func stringValue(raw json.RawMessage) (string, error) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' {
		if body := raw[1 : n-1]; plainString(body) {
			return string(body), nil
		}
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}
