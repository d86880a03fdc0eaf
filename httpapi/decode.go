package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxJSONInt is the largest token count the API takes: 2^53−1, the
// largest integer a JavaScript number holds exactly.
const maxJSONInt = 1<<53 - 1

// decode decodes a request body into v strictly: one JSON object, no
// unknown fields, no value of the wrong type, nothing after it. An empty
// body is an empty object. The error says what is wrong, for the caller.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if !utf8.Valid(body) {
		return errors.New("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("the body holds more than one JSON value")
	}
	return nil
}

// jsonError rewrites encoding/json's errors for callers.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		if te.Field == "" {
			return fmt.Errorf("the body must be a JSON object, not %s", te.Value)
		}
		return fmt.Errorf("field %q must be %s, not %s", te.Field, typeName(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return fmt.Errorf("the body is not valid JSON: %s (at byte %d)", strings.TrimPrefix(se.Error(), "json: "), se.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errors.New("the body is not valid JSON: it ends too soon")
	}
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

func typeName(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer in range"
	case kind == "map", kind == "struct":
		return "an object"
	case kind == "bool":
		return "true or false"
	}
	return "a " + kind
}

// checkTokens checks a token count a caller gives.
func checkTokens(field string, n int64) error {
	if n < 0 || n > maxJSONInt {
		return fmt.Errorf("%s must be an integer from 0 to %d, not %d", field, int64(maxJSONInt), n)
	}
	return nil
}

// maxSessionName bounds a session's name, so that the agent's id, a
// slash and the name fit budget.MaxSessionLen.
const maxSessionName = 200

// checkSessionName checks the name an agent gives its session.
func checkSessionName(name string) error {
	switch {
	case name == "":
		return errors.New("the session name is empty")
	case len(name) > maxSessionName:
		return fmt.Errorf("the session name is longer than %d bytes", maxSessionName)
	case !utf8.ValidString(name):
		return errors.New("the session name is not valid UTF-8")
	case strings.Contains(name, "/"):
		return errors.New("the session name contains '/'")
	case strings.ContainsFunc(name, unicode.IsControl):
		return errors.New("the session name contains a control character")
	}
	return nil
}

// sessionKey is the budget session of an agent's session name: its own,
// which no other agent can name.
func sessionKey(agent, name string) string { return agent + "/" + name }

// readAll reads r into buf, growing it.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
