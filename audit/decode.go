package audit

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// DecodeRecord parses the canonical encoding of a record. It rejects any
// input that is not exactly the canonical encoding of the record it
// describes: unknown or repeated keys, keys out of order, whitespace,
// other escapes, floats, invalid UTF-8 and malformed times are all errors
// wrapping ErrInvalidRecord. The returned record's Seq is zero.
//
// It parses the JSON object by hand, then encodes the result again and
// requires the very same bytes, so what it accepts is exactly what
// EncodeRecord produces.
func DecodeRecord(data []byte) (Record, error) {
	if len(data) > MaxRecordSize {
		return Record{}, fmt.Errorf("audit: %w: %d bytes, more than %d", ErrInvalidRecord, len(data), MaxRecordSize)
	}
	d := decoder{data: data}
	r, err := d.record()
	if err != nil {
		return Record{}, fmt.Errorf("audit: %w: at byte %d: %v", ErrInvalidRecord, d.pos, err)
	}
	var buf [512]byte
	again, err := EncodeRecord(buf[:0], &r)
	if err != nil {
		return Record{}, err
	}
	if !bytes.Equal(again, data) {
		return Record{}, fmt.Errorf("audit: %w: not in canonical form at byte %d", ErrInvalidRecord, firstDiff(again, data))
	}
	return r, nil
}

// decoder reads one JSON object of a record's shape.
type decoder struct {
	data []byte
	pos  int
}

var errSyntax = errors.New("malformed JSON")

func (d *decoder) record() (Record, error) {
	var r Record
	if err := d.expect('{'); err != nil {
		return r, err
	}
	haveTime := false
	for first := true; ; first = false {
		if d.peek() == '}' && first {
			break
		}
		if !first {
			if d.peek() == '}' {
				break
			}
			if err := d.expect(','); err != nil {
				return r, err
			}
		}
		key, err := d.string()
		if err != nil {
			return r, err
		}
		if err := d.expect(':'); err != nil {
			return r, err
		}
		var dst *string
		switch key {
		case "agent":
			dst = &r.Agent
		case "assigned":
			dst = &r.AssignedLevel
		case "event":
			dst = &r.Event
		case "namespace":
			dst = &r.Namespace
		case "reason":
			dst = &r.Reason
		case "required":
			dst = &r.RequiredLevel
		case "scope":
			dst = &r.Scope
		case "session":
			dst = &r.Session
		case "tool":
			dst = &r.Tool
		case "outcome":
			v, err := d.string()
			if err != nil {
				return r, err
			}
			r.Outcome = Outcome(v)
		case "time":
			v, err := d.string()
			if err != nil {
				return r, err
			}
			if r.Time, err = parseTime(v); err != nil {
				return r, err
			}
			haveTime = true
		case "tokens":
			if r.Tokens, err = d.int(); err != nil {
				return r, err
			}
		case "attrs":
			if r.Attrs, err = d.attrs(); err != nil {
				return r, err
			}
		default:
			return r, fmt.Errorf("unknown key %q", truncateForError(key))
		}
		if dst != nil {
			if *dst, err = d.string(); err != nil {
				return r, err
			}
		}
	}
	if err := d.expect('}'); err != nil {
		return r, err
	}
	if d.pos != len(d.data) {
		return r, errors.New("data after the object")
	}
	if !haveTime {
		return r, errors.New("no time")
	}
	return r, nil
}

func (d *decoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *decoder) expect(c byte) error {
	if d.peek() != c {
		return fmt.Errorf("%w: want %q", errSyntax, c)
	}
	d.pos++
	return nil
}

func (d *decoder) attrs() (map[string]string, error) {
	if err := d.expect('{'); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for first := true; d.peek() != '}'; first = false {
		if !first {
			if err := d.expect(','); err != nil {
				return nil, err
			}
		}
		k, err := d.string()
		if err != nil {
			return nil, err
		}
		if err := d.expect(':'); err != nil {
			return nil, err
		}
		v, err := d.string()
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("attribute %q twice", truncateForError(k))
		}
		m[k] = v
	}
	d.pos++
	return m, nil
}

// int reads a non-negative decimal integer.
func (d *decoder) int() (int64, error) {
	start := d.pos
	for d.pos < len(d.data) && '0' <= d.data[d.pos] && d.data[d.pos] <= '9' {
		d.pos++
	}
	n, err := strconv.ParseInt(string(d.data[start:d.pos]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: want an integer", errSyntax)
	}
	return n, nil
}

// string reads a JSON string. It accepts every JSON escape; the
// canonical comparison afterwards rejects the ones EncodeRecord never
// writes.
func (d *decoder) string() (string, error) {
	if err := d.expect('"'); err != nil {
		return "", err
	}
	start := d.pos
	// Fast path: no escapes.
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		if c == '"' {
			s := d.data[start:d.pos]
			d.pos++
			if !utf8.Valid(s) {
				return "", errors.New("invalid UTF-8")
			}
			return string(s), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		d.pos++
	}
	buf := append([]byte(nil), d.data[start:d.pos]...)
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			if !utf8.Valid(buf) {
				return "", errors.New("invalid UTF-8")
			}
			return string(buf), nil
		case c < 0x20:
			return "", fmt.Errorf("%w: control character in string", errSyntax)
		case c != '\\':
			buf = append(buf, c)
			d.pos++
			continue
		}
		if d.pos+1 >= len(d.data) {
			break
		}
		e := d.data[d.pos+1]
		d.pos += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return "", fmt.Errorf("%w: bad \\u escape", errSyntax)
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if d.peek() == '\\' && d.pos+1 < len(d.data) && d.data[d.pos+1] == 'u' {
					d.pos += 2
					r2, _ = d.hex4()
				}
				r = utf16.DecodeRune(r, r2)
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return "", fmt.Errorf("%w: bad escape", errSyntax)
		}
	}
	return "", fmt.Errorf("%w: unterminated string", errSyntax)
}

func (d *decoder) hex4() (rune, bool) {
	if d.pos+4 > len(d.data) {
		return 0, false
	}
	var r rune
	for _, c := range d.data[d.pos : d.pos+4] {
		var v byte
		switch {
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	d.pos += 4
	return r, true
}

// parseTime parses timeLayout exactly: YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ.
func parseTime(s string) (time.Time, error) {
	// The error is made only for a bad time: records are decoded by the
	// million when a log is verified.
	bad := func() error { return fmt.Errorf("malformed time %q", truncateForError(s)) }
	if len(s) != len(timeLayout) || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
		s[13] != ':' || s[16] != ':' || s[19] != '.' || s[29] != 'Z' {
		return time.Time{}, bad()
	}
	num := func(from, to int) int {
		n := 0
		for i := from; i < to; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				return -1
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	y, mo, d, h, mi, sec, ns := num(0, 4), num(5, 7), num(8, 10), num(11, 13), num(14, 16), num(17, 19), num(20, 29)
	if y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59 || ns < 0 {
		return time.Time{}, bad()
	}
	t := time.Date(y, time.Month(mo), d, h, mi, sec, ns, time.UTC)
	if t.Day() != d { // February 30th and the like
		return time.Time{}, bad()
	}
	return t, nil
}
