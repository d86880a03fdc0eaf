// Package textsafe escapes text an agent chose — a tool name, a session
// id, a reason — before agentsec shows it on a terminal, in a table, a
// spreadsheet, a SIEM or a web page's message, so that it can't act on
// whoever reads it.
package textsafe

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Escaping for terminals, tables, spreadsheets and SIEMs. Record fields
// are chosen by agents: a tool name or a session id can hold terminal
// escape sequences (ESC, CSI, BEL, backspace, CR), line separators, or
// bidi overrides and tag characters that make text read differently
// from what it is. Everything agentsec prints escapes every character
// strconv.IsPrint rejects — C0 and C1 controls, DEL, U+2028 and U+2029,
// format characters (bidi controls, zero-width and tag characters),
// private-use and unassigned code points, non-ASCII spaces — and bytes
// that are not UTF-8.

// Escape returns s as the body of a Go string literal, less the
// escaping of quote marks: a backslash doubled, and every character
// strconv.IsPrint rejects, and every byte that is not UTF-8, written as
// Go writes them (\n, \x1b, \u202e, \U000e0041, \xff). Distinct values
// stay distinct: strconv.Unquote gets s back once quote marks are
// escaped. It is for values shown as text: table cells, CSV cells, CEF.
func Escape(s string) string {
	i := printablePrefix(s, true)
	if i == len(s) {
		return s
	}
	b := make([]byte, i, len(s)+16)
	copy(b, s)
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = fmt.Appendf(b, `\x%02x`, s[i])
		case r == '\\':
			b = append(b, `\\`...)
		case strconv.IsPrint(r):
			b = append(b, s[i:i+n]...)
		default:
			q := strconv.QuoteRune(r) // '\x1b', with the escape Go uses
			b = append(b, q[1:len(q)-1]...)
		}
		i += n
	}
	return string(b)
}

// OneLine returns s, a message or compact JSON such as a record's
// canonical encoding, with every character strconv.IsPrint rejects
// written as a JSON escape (\n, \u001b, \u202e, \udb40\udc41), so that
// it is one line that cannot act on a terminal. Compact JSON stays JSON,
// with the same values. A byte that is not UTF-8 becomes \ufffd.
// Backslashes are left alone: in JSON and in messages they are escapes
// already.
func OneLine(s string) string {
	i := printablePrefix(s, false)
	if i == len(s) {
		return s
	}
	b := make([]byte, i, len(s)+16)
	copy(b, s)
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, `\ufffd`...)
		case strconv.IsPrint(r):
			b = append(b, s[i:i+n]...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			b = fmt.Appendf(b, `\u%04x\u%04x`, r1, r2)
		default:
			b = fmt.Appendf(b, `\u%04x`, r)
		}
		i += n
	}
	return string(b)
}

// printablePrefix returns the length of the longest prefix of s that
// needs no escaping: valid UTF-8 of characters strconv.IsPrint accepts,
// and, if backslash is set, no backslash.
func printablePrefix(s string, backslash bool) int {
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c < ' ' || c == 0x7f || (backslash && c == '\\') {
				return i
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || !strconv.IsPrint(r) {
			return i
		}
		i += n
	}
	return len(s)
}
