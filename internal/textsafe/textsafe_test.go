package textsafe_test

import (
	"testing"

	"github.com/agentsec/agentsec/internal/textsafe"
)

func TestEscapeText(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{"plain text, ü and 🚀", "plain text, ü and 🚀"},
		{"\x1b[31m", `\x1b[31m`},
		{"bell\a bs\b cr\r lf\n tab\t", `bell\a bs\b cr\r lf\n tab\t`},
		{"del\x7f nul\x00", `del\x7f nul\x00`},
		{"csi\u009b nel\u0085", `csi\u009b nel\u0085`},
		{"ls\u2028 ps\u2029", `ls\u2028 ps\u2029`},
		{"rlo\u202e lri\u2066 pdi\u2069 alm\u061c", `rlo\u202e lri\u2066 pdi\u2069 alm\u061c`},
		{"tag\U000E0041", `tag\U000e0041`},
		{"nbsp\u00a0zwsp\u200b", `nbsp\u00a0zwsp\u200b`},
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},
		{`back\slash`, `back\\slash`},
		{`\x1b`, `\\x1b`},
		{`"quoted"`, `"quoted"`},
		{"\ufffd", "\ufffd"},
	} {
		if got := textsafe.Escape(tt.in); got != tt.want {
			t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{`{"a":"b\\c\"d"}`, `{"a":"b\\c\"d"}`},
		{"esc\x1b del\x7f csi\u009b", `esc\u001b del\u007f csi\u009b`},
		{"cr\r lf\n tab\t", `cr\r lf\n tab\t`},
		{"rlo\u202e ls\u2028", `rlo\u202e ls\u2028`},
		{"tag\U000E0041", `tag\udb40\udc41`},
		{"bad \xff", `bad \ufffd`},
	} {
		if got := textsafe.OneLine(tt.in); got != tt.want {
			t.Errorf("OneLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
