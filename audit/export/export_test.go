package export_test

import (
	"bytes"
	"encoding/csv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/export"
)

func TestCEFEscaping(t *testing.T) {
	tests := []struct {
		in, header, value string
	}{
		{"plain", "plain", "plain"},
		{"", "", ""},
		{"a|b", `a\|b`, "a|b"},
		{`a\b`, `a\\b`, `a\\b`},
		{"a=b", "a=b", `a\=b`},
		{`\|=`, `\\\|=`, `\\|\=`},
		{`\\`, `\\\\`, `\\\\`},
		{`a\|b`, `a\\\|b`, `a\\|b`},
		{`a\=b`, `a\\=b`, `a\\\=b`},
		{"line1\nline2", `line1\nline2`, `line1\nline2`},
		{"cr\r\nlf", `cr\r\nlf`, `cr\r\nlf`},
		{`literal \n`, `literal \\n`, `literal \\n`},
		{"end\\", `end\\`, `end\\`},
		{"=|=|", `=\|=\|`, `\=|\=|`},
		{"x=1 y=2", "x=1 y=2", `x\=1 y\=2`},
		{"CEF:0|forged|line\nCEF:0|x", `CEF:0\|forged\|line\nCEF:0\|x`, `CEF:0|forged|line\nCEF:0|x`},
		{"tab\there", `tab\there`, `tab\there`},
		{"esc\x1b[31m bel\a bs\b", `esc\x1b[31m bel\a bs\b`, `esc\x1b[31m bel\a bs\b`},
		{"csi\u009b2J rlo\u202e|x=y", `csi\u009b2J rlo\u202e\|x=y`, `csi\u009b2J rlo\u202e|x\=y`},
		{"naïve café — 日本語 🚀", "naïve café — 日本語 🚀", "naïve café — 日本語 🚀"},
		{"ü|ß=\\", `ü\|ß=\\`, `ü|ß\=\\`},
	}
	for _, tt := range tests {
		if got := export.CEFHeader(tt.in); got != tt.header {
			t.Errorf("CEFHeader(%q) = %q, want %q", tt.in, got, tt.header)
		}
		if got := export.CEFValue(tt.in); got != tt.value {
			t.Errorf("CEFValue(%q) = %q, want %q", tt.in, got, tt.value)
		}
	}
}

func TestCEFLine(t *testing.T) {
	tm := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name string
		rec  audit.Record
		want string
	}{{
		name: "allowed call",
		rec: audit.Record{Seq: 7, Time: tm, Namespace: "ns", Event: "tool.call", Agent: "bot",
			Session: "s1", Tool: "read_file", Outcome: audit.OutcomeAllowed, Reason: "ok", Tokens: 42},
		want: "CEF:0|agentsec|agentsec|devel|tool.call|tool.call read_file allow|3|rt=1748779200123 externalId=7 act=allow suser=bot " +
			"cs1Label=session cs1=s1 cs2Label=tool cs2=read_file cs3Label=namespace cs3=ns cn1Label=tokens cn1=42 reason=ok\n",
	}, {
		name: "denied call",
		rec:  audit.Record{Seq: 8, Time: tm, Event: "tool.call", Tool: "x", Outcome: audit.OutcomeDenied},
		want: "CEF:0|agentsec|agentsec|devel|tool.call|tool.call x deny|7|rt=1748779200123 externalId=8 act=deny cs2Label=tool cs2=x\n",
	}, {
		name: "no outcome",
		rec:  audit.Record{Seq: 0, Time: tm, Event: "trust.assign"},
		want: "CEF:0|agentsec|agentsec|devel|trust.assign|trust.assign|1|rt=1748779200123 externalId=0\n",
	}, {
		name: "nasty",
		rec: audit.Record{Seq: 9, Time: tm, Event: "ev|il\\", Agent: "a=b\\c", Session: "s\nCEF:0|x|y",
			Tool: "t|u", Outcome: audit.OutcomeDenied, Reason: "why=\r\nbecause | ü"},
		want: `CEF:0|agentsec|agentsec|devel|ev\|il\\|ev\|il\\ t\|u deny|7|rt=1748779200123 externalId=9 act=deny suser=a\=b\\c ` +
			`cs1Label=session cs1=s\nCEF:0|x|y cs2Label=tool cs2=t|u reason=why\=\r\nbecause | ü` + "\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := export.CEFLine(&tt.rec, "devel")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("CEFLine (-want +got):\n%s", diff)
			}
			if strings.Count(got, "\n") != 1 {
				t.Errorf("CEFLine is not one line: %q", got)
			}
		})
	}
}

// TestCSVRoundTrip checks that a CSV reader gets back every field of a
// record, however nasty: escaped as textsafe.Escape does, with a ' in front of
// what a spreadsheet would take for a formula.
func TestCSVRoundTrip(t *testing.T) {
	rec := audit.Record{Seq: 3, Time: time.Date(2025, 6, 1, 12, 0, 0, 5, time.UTC), Namespace: "n,s",
		Event: "e\"v", Agent: "a\nb", Session: "=cmd()", Tool: "t\r\nu", Scope: "ü", Outcome: audit.OutcomeDenied,
		Reason: `"quoted", really`, RequiredLevel: "r", AssignedLevel: "a", Tokens: 12,
		Attrs: map[string]string{"z": "<&>", "a": "1"}}
	var b bytes.Buffer
	w, err := export.NewWriter(&b, export.CSV, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&rec, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{export.CSVHeader, {"3", "2025-06-01T12:00:00.000000005Z", "n,s", "e\"v", `a\nb`, "'=cmd()",
		`t\r\nu`, "ü", "deny", `"quoted", really`, "r", "a", "12", `{"a":"1","z":"<&>"}`}}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("CSV rows (-want +got):\n%s", diff)
	}
}

func TestCSVText(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"=1+2", "'=1+2"},
		{"+1", "'+1"},
		{"-1", "'-1"},
		{"@SUM(A1)", "'@SUM(A1)"},
		{"'already", "''already"},
		{"\t=tab", `\t=tab`},
		{"\r=cr", `\r=cr`},
		{"a=b", "a=b"},
		{"=\x1b[2J", `'=\x1b[2J`},
	} {
		if got := export.CSVText(tt.in); got != tt.want {
			t.Errorf("export.CSVText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
