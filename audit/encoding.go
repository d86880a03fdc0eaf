package audit

import (
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The canonical encoding of a Record is a JSON object with exactly one
// byte sequence per record:
//
//   - keys in ascending byte order, each at most once: agent, assigned,
//     attrs, event, namespace, outcome, reason, required, scope, session,
//     time, tokens, tool;
//   - "event" and "time" always present; every other field omitted when it
//     is empty or zero;
//   - no whitespace outside strings;
//   - strings as valid UTF-8, escaping only '"' as \", '\' as \\ and the
//     characters U+0000 to U+001F as \u00xx with lowercase hex;
//   - integers in plain decimal, no sign, no leading zeros; no floats;
//   - time in UTC as YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ, always nine
//     fractional digits;
//   - attrs as an object of string values under the same rules.
//
// The record's Seq is its position in the log and is not encoded.
// Fields may be added later under new keys; a record without them encodes
// exactly as before, so old records keep their bytes and hashes.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// EncodeRecord appends the canonical encoding of r to dst. It is an error
// for r to fail the log's validation or to encode to more than
// MaxRecordSize bytes, which DecodeRecord and so Verify would refuse.
func EncodeRecord(dst []byte, r *Record) ([]byte, error) {
	if err := r.checkFields(); err != nil {
		return dst, err
	}
	if y := r.Time.UTC().Year(); y < 0 || y > 9999 {
		return dst, fmt.Errorf("audit: %w: time %v outside years 0 to 9999", ErrInvalidRecord, r.Time)
	}
	b, ok := appendRecord(dst, r)
	if !ok {
		// Let Validate name the field.
		return dst, r.Validate()
	}
	if n := len(b) - len(dst); n > MaxRecordSize {
		return dst, fmt.Errorf("audit: %w: record of %d bytes is larger than %d", ErrInvalidRecord, n, MaxRecordSize)
	}
	return b, nil
}

// appendRecord encodes a record that passed checkFields. It reports false
// if a string is not valid UTF-8.
func appendRecord(b []byte, r *Record) ([]byte, bool) {
	valid := true
	b = append(b, '{')
	first := true
	field := func(key string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, key...)
		b = append(b, '"', ':')
	}
	str := func(key, v string) {
		if v != "" {
			field(key)
			var ok bool
			b, ok = appendString(b, v)
			valid = valid && ok
		}
	}
	str("agent", r.Agent)
	str("assigned", r.AssignedLevel)
	if len(r.Attrs) > 0 {
		field("attrs")
		var ok bool
		b, ok = appendAttrs(b, r.Attrs)
		valid = valid && ok
	}
	str("event", r.Event)
	str("namespace", r.Namespace)
	str("outcome", string(r.Outcome))
	str("reason", r.Reason)
	str("required", r.RequiredLevel)
	str("scope", r.Scope)
	str("session", r.Session)
	field("time")
	b = appendTime(b, r.Time)
	if r.Tokens != 0 {
		field("tokens")
		b = strconv.AppendInt(b, r.Tokens, 10)
	}
	str("tool", r.Tool)
	return append(b, '}'), valid
}

// appendTime appends t as a quoted timeLayout string. It is
// t.UTC().AppendFormat(timeLayout) without the layout interpretation,
// which costs more than the rest of a record's encoding.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	b = append(b, '"')
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond(), 9)
	return append(b, 'Z', '"')
}

// appendDigits appends the width lowest decimal digits of v, v >= 0.
func appendDigits(b []byte, v, width int) []byte {
	var d [9]byte
	for i := width - 1; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, d[:width]...)
}

func appendAttrs(b []byte, attrs map[string]string) ([]byte, bool) {
	b = append(b, '{')
	var keysBuf [16]string
	keys := keysBuf[:0]
	for k := range attrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	valid := true
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		var okK, okV bool
		b, okK = appendString(b, k)
		b = append(b, ':')
		b, okV = appendString(b, attrs[k])
		valid = valid && okK && okV
	}
	return append(b, '}'), valid
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a canonical JSON string. It reports false if
// s is not valid UTF-8.
func appendString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				return b, false
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"'), true
}

func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
