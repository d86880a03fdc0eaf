package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/export"
	"github.com/agentsec/agentsec/store/sqlite"
)

// hostile are values an agent can choose for a tool name, a session id,
// a reason or an attribute, meant to act on whoever reads the log.
var hostile = []string{
	// Terminal escapes: OSC, BEL and CSI by ESC; C1 controls in UTF-8;
	// CR, backspace, DEL and NUL.
	"\x1b]0;title\x07\x1b[2J\x1b[31mred",
	"\u009b31mC1 CSI\u0085NEL\u009d",
	"ok\r fake line\bX\x7f\x00",
	// Line breaks of every kind.
	"line1\nline2\u2028ls\u2029ps\v\f",
	// Text that reads as other text: bidi overrides and marks, tag
	// characters, invisible and look-alike spaces.
	"admin\u202egnp.exe\u2066\u2069\u200f",
	"tag\U000E0049\U000E0047\U000E004Etags",
	"zero\u200bwidth\ufeffbom\u00a0nbsp",
	// Formulas for a spreadsheet.
	"=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "'quoted", "\t=tab",
	// An escape written out, which must not read as the real one.
	`back\slash \x1b literal`,
	// CEF's own syntax.
	"a=b|c\\", "CEF:0|x|y|z|1|2|3|k=v",
	// Printable: left as it is.
	"naïve café — 日本語 🚀 \ufffd",
}

// unsafeRune reports whether r must not reach a terminal or a SIEM as it
// is. It is written from the Unicode categories, not from
// strconv.IsPrint as the code is, so that the tests check the code's
// choice.
func unsafeRune(r rune) bool {
	switch {
	case r < ' ', r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0xe0000 && r <= 0xe007f: // tags
		return true
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs)
}

// checkShown fails unless s is valid UTF-8 without a rune unsafeRune
// rejects, and without a line break unless lines is set, when it may end
// lines with \n.
func checkShown(t *testing.T, what, s string, lines bool) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Errorf("%s is not UTF-8: %q", what, s)
		return
	}
	if lines {
		s = strings.ReplaceAll(s, "\n", "")
	}
	for i, r := range s {
		if unsafeRune(r) {
			t.Errorf("%s holds %U at byte %d: %q", what, r, i, s)
			return
		}
	}
}

// unquoteText undoes escapeText.
func unquoteText(s string) (string, error) {
	return strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`)
}

// unescapeCEF undoes export.CEFHeader (sep '|') or export.CEFValue (sep '='), and
// fails on an unescaped sep.
func unescapeCEF(s string, sep byte) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == sep:
			return "", fmt.Errorf("unescaped %c at %d", sep, i)
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == sep:
			b.WriteByte(sep)
			i++
		case s[i] == '\\' && i+1 < len(s):
			b.WriteString(s[i : i+2])
			i++
		default:
			b.WriteByte(s[i])
		}
	}
	return unquoteText(b.String())
}

// uncsv undoes export.CSVText.
func uncsv(s string) (string, error) {
	return unquoteText(strings.TrimPrefix(s, "'"))
}

// hostileLog writes a SQLite log whose records hold the hostile values in
// every field an agent chooses, and returns its path and the records.
func hostileLog(t *testing.T) (string, []audit.Record) {
	t.Helper()
	ctx := context.Background()
	skey, _, err := audit.GenerateKey("hostile")
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlite.Open(ctx, db, sqlite.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(ctx, st, audit.Options{Namespace: "hostile", Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	for i, h := range hostile {
		if !utf8.ValidString(h) {
			continue
		}
		rec, err := l.Log(ctx, audit.Record{Event: "tool.call" + h, Agent: h, Session: h, Tool: h, Scope: h,
			Outcome: audit.OutcomeDenied, Reason: h, RequiredLevel: h, AssignedLevel: h, Tokens: int64(i),
			Attrs: map[string]string{h: h, "k": h}})
		if err != nil {
			t.Fatalf("logging %q: %v", h, err)
		}
		recs = append(recs, rec)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return db, recs
}

// Records whose fields are terminal escapes, bidi overrides and formulas
// come out of query and export escaped, and come back exactly from what
// was written: query's table and JSON lines, export's CSV and CEF.
func TestHostileRecordsEscaped(t *testing.T) {
	db, recs := hostileLog(t)

	t.Run("query table", func(t *testing.T) {
		code, out, stderr := runExit(t, &Main{}, "audit", "query", "-db", db)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		checkShown(t, "the table", out, true)
		if n := strings.Count(out, "\n"); n != len(recs)+1 {
			t.Errorf("the table has %d lines, want %d:\n%s", n, len(recs)+1, out)
		}
		for _, want := range []string{`\x1b]0;title\a\x1b[2J`, `\u009b31mC1`, `ok\r fake line\bX\x7f\x00`, `admin\u202egnp.exe`, `back\\slash \\x1b literal`} {
			if !strings.Contains(out, want) {
				t.Errorf("the table lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("query jsonl", func(t *testing.T) {
		code, out, stderr := runExit(t, &Main{}, "audit", "query", "-db", db, "-format", "jsonl")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		checkShown(t, "the JSON lines", out, true)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != len(recs) {
			t.Fatalf("%d JSON lines, want %d", len(lines), len(recs))
		}
		for i, line := range lines {
			var got struct {
				Index                                               uint64
				Agent, Session, Tool, Scope, Reason, Event, Outcome string
				Attrs                                               map[string]string
			}
			if err := json.Unmarshal([]byte(line), &got); err != nil {
				t.Fatalf("line %d: %v: %s", i, err, line)
			}
			r := recs[i]
			if got.Index != r.Seq || got.Agent != r.Agent || got.Session != r.Session || got.Tool != r.Tool ||
				got.Scope != r.Scope || got.Reason != r.Reason || got.Event != r.Event || !maps.Equal(got.Attrs, r.Attrs) {
				t.Errorf("line %d decodes to %+v, want the record %+v", i, got, r)
			}
		}
	})

	t.Run("export csv", func(t *testing.T) {
		code, out, stderr := runExit(t, &Main{}, "audit", "export", "-db", db, "-format", "csv")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		checkShown(t, "the CSV", out, true)
		rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(recs)+1 {
			t.Fatalf("%d CSV rows, want %d", len(rows), len(recs)+1)
		}
		for i, r := range recs {
			row := rows[i+1]
			for col, want := range map[int]string{2: r.Namespace, 3: r.Event, 4: r.Agent, 5: r.Session, 6: r.Tool,
				7: r.Scope, 8: string(r.Outcome), 9: r.Reason, 10: r.RequiredLevel, 11: r.AssignedLevel} {
				if row[col] != "" && strings.ContainsRune("=+-@\t\r", rune(row[col][0])) {
					t.Errorf("row %d: %s %q starts a formula", i, export.CSVHeader[col], row[col])
				}
				if got, err := uncsv(row[col]); err != nil || got != want {
					t.Errorf("row %d: %s %q reads back as %q (%v), want %q", i, export.CSVHeader[col], row[col], got, err, want)
				}
			}
			var attrs map[string]string
			if err := json.Unmarshal([]byte(row[13]), &attrs); err != nil || !maps.Equal(attrs, r.Attrs) {
				t.Errorf("row %d: attrs %q decode to %q (%v), want %q", i, row[13], attrs, err, r.Attrs)
			}
		}
	})

	t.Run("export cef", func(t *testing.T) {
		code, out, stderr := runExit(t, &Main{}, "audit", "export", "-db", db, "-format", "cef")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		checkShown(t, "the CEF", out, true)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != len(recs) {
			t.Fatalf("%d CEF lines, want %d", len(lines), len(recs))
		}
		for i, line := range lines {
			// Eight header fields: the seventh '|' that no backslash
			// escapes ends them.
			if !strings.HasPrefix(line, "CEF:0|agentsec|agentsec|devel|") {
				t.Fatalf("line %d: %s", i, line)
			}
			fields := splitCEFHeader(line)
			if len(fields) != 8 {
				t.Fatalf("line %d has %d header fields: %q", i, len(fields), fields)
			}
			if got, err := unescapeCEF(fields[4], '|'); err != nil || got != recs[i].Event {
				t.Errorf("line %d: event %q reads back as %q (%v), want %q", i, fields[4], got, err, recs[i].Event)
			}
			// Every '=' in the extensions that no backslash escapes
			// follows one of the keys agentsec writes.
			ext := fields[7]
			for j := 0; j < len(ext); j++ {
				if ext[j] == '\\' {
					j++
					continue
				}
				if ext[j] == '=' {
					k := strings.LastIndexByte(ext[:j], ' ') + 1
					switch ext[k:j] {
					case "rt", "externalId", "act", "suser", "cs1Label", "cs1", "cs2Label", "cs2", "cs3Label", "cs3",
						"cn1Label", "cn1", "reason":
					default:
						t.Errorf("line %d: an unescaped '=' after %q: %s", i, ext[k:j], ext)
					}
				}
			}
			if want := " suser=" + export.CEFValue(recs[i].Agent) + " "; !strings.Contains(ext, want) {
				t.Errorf("line %d lacks %q: %s", i, want, ext)
			}
		}
	})

	t.Run("export jsonl", func(t *testing.T) {
		// The stored bytes, verbatim, for the leaf hash: their JSON
		// escapes the C0 controls only. What they hold decodes exactly.
		code, out, stderr := runExit(t, &Main{}, "audit", "export", "-db", db)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			el := parseExportLine(t, line)
			if strings.ContainsFunc(string(el.record), func(r rune) bool { return r < ' ' }) {
				t.Errorf("record %d holds a C0 control: %s", i, el.record)
			}
			var got struct{ Agent string }
			if err := json.Unmarshal(el.record, &got); err != nil || got.Agent != recs[i].Agent {
				t.Errorf("record %d: agent %q (%v), want %q", i, got.Agent, err, recs[i].Agent)
			}
		}
	})
}

// splitCEFHeader splits a CEF line at its first seven unescaped '|'.
func splitCEFHeader(line string) []string {
	var fields []string
	start := 0
	for i := 0; i < len(line) && len(fields) < 7; i++ {
		switch line[i] {
		case '\\':
			i++
		case '|':
			fields = append(fields, line[start:i])
			start = i + 1
		}
	}
	return append(fields, line[start:])
}

// FuzzEscape checks the escaping functions over any string: nothing a
// terminal or a SIEM could act on survives, the output is one line, CSV
// cells start no formula, CEF separators are escaped, and each function
// can be undone, so distinct values stay distinct. The seeds run as
// ordinary tests.
func FuzzEscape(f *testing.F) {
	for _, h := range hostile {
		f.Add(h)
	}
	for _, s := range []string{"", "\\", "'", "=", "\xff", "\xc2\x9b", "\xed\xa0\x80", "\U0010ffff", "a\\=b", `\|`, `\\x1b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		text := escapeText(s)
		checkShown(t, "escapeText", text, false)
		if got, err := unquoteText(text); err != nil || got != s {
			t.Errorf("escapeText(%q) = %q, which reads back as %q (%v)", s, text, got, err)
		}

		cell := export.CSVText(s)
		checkShown(t, "CSVText", cell, false)
		if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
			t.Errorf("export.CSVText(%q) = %q starts a formula", s, cell)
		}
		if got, err := uncsv(cell); err != nil || got != s {
			t.Errorf("export.CSVText(%q) = %q, which reads back as %q (%v)", s, cell, got, err)
		}

		for _, c := range []struct {
			name string
			out  string
			sep  byte
		}{{"CEFHeader", export.CEFHeader(s), '|'}, {"CEFValue", export.CEFValue(s), '='}} {
			checkShown(t, c.name, c.out, false)
			if got, err := unescapeCEF(c.out, c.sep); err != nil || got != s {
				t.Errorf("%s(%q) = %q, which reads back as %q (%v)", c.name, s, c.out, got, err)
			}
		}

		line := oneLine(s)
		checkShown(t, "oneLine", line, false)
		if utf8.ValidString(s) {
			// A JSON string stays JSON, with the same value.
			j, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			if err := json.Unmarshal([]byte(oneLine(string(j))), &got); err != nil || got != s {
				t.Errorf("oneLine(%s) decodes to %q (%v), want %q", j, got, err, s)
			}
		}
	})
}
