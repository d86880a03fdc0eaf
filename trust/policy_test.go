package trust

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func mustPolicy(t testing.TB, l *Ladder, rules []Rule, def string) *Policy {
	t.Helper()
	p, err := NewPolicy(l, rules, def)
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return p
}

func TestPolicyRequired(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{
		{Tool: "fs.*", Level: "verified"},
		{Tool: "fs.read", Level: "public"},     // exact beats the pattern, even a stricter one
		{Tool: "fs.delete", Level: "verified"}, // exact beats the stricter pattern below
		{Tool: "*.delete", Level: "privileged"},
		{Tool: "github*", Level: "verified"},
		{Tool: "github/admin*", Level: "privileged"},
		{Tool: "shell", Level: "privileged"},
		{Tool: "\\*", Level: "privileged"},
		{Tool: "x[0-9]", Level: "public"},
	}, "")
	tests := []struct {
		tool string
		want string // "" for no rule
	}{
		{"fs.read", "public"},
		{"fs.write", "verified"},
		{"fs.delete", "verified"},
		{"db.delete", "privileged"},
		{"fs.x.delete", "privileged"}, // both patterns match; the stricter wins
		{"github", "verified"},
		{"github/list_issues", "verified"},
		{"github/admin/delete_repo", "privileged"},
		{"shell", "privileged"},
		{"shell2", ""},
		{"*", "privileged"},
		{"x5", "public"},
		{"x55", ""},
		{"xa", ""},
		{"", ""},
		{"FS.read", ""},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.tool), func(t *testing.T) {
			lv, ok := p.Required(tt.tool)
			if tt.want == "" {
				if ok {
					t.Errorf("Required(%q) = %d, true; want no rule", tt.tool, lv)
				}
				return
			}
			if !ok {
				t.Fatalf("Required(%q): no rule, want %q", tt.tool, tt.want)
			}
			if got := p.Ladder().LevelName(lv); got != tt.want {
				t.Errorf("Required(%q) = %q, want %q", tt.tool, got, tt.want)
			}
		})
	}
}

// The strictest matching pattern wins however the rules are ordered, so a
// later, looser pattern can never weaken an earlier, stricter one.
func TestPolicyPatternOrderIndependent(t *testing.T) {
	l := AumOSLadder()
	rules := []Rule{
		{Tool: "*", Level: "observer"},
		{Tool: "deploy*", Level: "act-with-approval"},
		{Tool: "deploy/prod*", Level: "autonomous"},
		{Tool: "*prod*", Level: "act-and-report"},
		{Tool: "deploy/?rod/*", Level: "suggest"},
	}
	want := map[string]string{
		"read":               "observer",
		"deploy/staging":     "act-with-approval",
		"deploy/prod/web":    "autonomous",
		"reprod":             "act-and-report",
		"deploy/xrod/web":    "act-with-approval",
		"deploy/production1": "autonomous",
	}
	for i, perm := range permutations(rules) {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			p := mustPolicy(t, l, perm, "")
			for tool, level := range want {
				lv, ok := p.Required(tool)
				if !ok {
					t.Fatalf("rules %v: Required(%q): no rule, want %q", perm, tool, level)
				}
				if got := l.LevelName(lv); got != level {
					t.Errorf("rules %v: Required(%q) = %q, want %q", perm, tool, got, level)
				}
			}
		})
	}
}

func permutations(rules []Rule) [][]Rule {
	if len(rules) <= 1 {
		return [][]Rule{slices.Clone(rules)}
	}
	var out [][]Rule
	for i := range rules {
		rest := append(slices.Clone(rules[:i]), rules[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]Rule{rules[i]}, p...))
		}
	}
	return out
}

func TestPolicyDefault(t *testing.T) {
	l := DefaultLadder()
	rules := []Rule{{Tool: "shell", Level: "privileged"}, {Tool: "fs.*", Level: "verified"}}
	tests := []struct {
		def  string
		tool string
		want string // "" for no rule
	}{
		{"", "other", ""},
		{"public", "other", "public"},
		{"verified", "other", "verified"},
		{"privileged", "other", "privileged"},
		// The default never overrides a rule, in either direction.
		{"public", "shell", "privileged"},
		{"privileged", "fs.read", "verified"},
	}
	for _, tt := range tests {
		t.Run(tt.def+"/"+tt.tool, func(t *testing.T) {
			p := mustPolicy(t, l, rules, tt.def)
			lv, ok := p.Required(tt.tool)
			if tt.want == "" {
				if ok {
					t.Errorf("Required(%q) = %d, true; want no rule", tt.tool, lv)
				}
				return
			}
			if !ok {
				t.Fatalf("Required(%q): no rule, want %q", tt.tool, tt.want)
			}
			if got := l.LevelName(lv); got != tt.want {
				t.Errorf("Required(%q) = %q, want %q", tt.tool, got, tt.want)
			}
		})
	}
}

func TestPolicyNoRules(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), nil, "")
	if lv, ok := p.Required("anything"); ok {
		t.Errorf("Required on empty policy = %d, true; want no rule", lv)
	}
	if got := p.Rules(); len(got) != 0 {
		t.Errorf("Rules() = %v, want none", got)
	}
}

func TestPolicyRules(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{
		{Tool: "z", Level: "public"},
		{Tool: "a*", Level: "verified"},
		{Tool: "b*", Level: "privileged"},
		{Tool: "a", Level: "privileged"},
		{Tool: "c*", Level: "verified"},
		{Tool: "m", Level: "verified"},
	}, "public")
	want := []Rule{
		{Tool: "a", Level: "privileged"},
		{Tool: "m", Level: "verified"},
		{Tool: "z", Level: "public"},
		{Tool: "b*", Level: "privileged"},
		{Tool: "a*", Level: "verified"},
		{Tool: "c*", Level: "verified"},
	}
	if got := p.Rules(); !slices.Equal(got, want) {
		t.Errorf("Rules() = %v, want %v", got, want)
	}
}

// NewPolicy copies what it needs: changing the caller's rules afterwards
// changes nothing.
func TestPolicyCopiesRules(t *testing.T) {
	rules := []Rule{{Tool: "shell", Level: "privileged"}}
	p := mustPolicy(t, DefaultLadder(), rules, "")
	rules[0] = Rule{Tool: "shell", Level: "public"}
	lv, ok := p.Required("shell")
	if !ok || lv != 2 {
		t.Errorf("Required(\"shell\") = %d, %v; want 2, true", lv, ok)
	}
}

func TestNewPolicyErrors(t *testing.T) {
	l := DefaultLadder()
	tests := []struct {
		name         string
		ladder       *Ladder
		rules        []Rule
		def          string
		unknownLevel bool // the error must wrap ErrUnknownLevel
	}{
		{name: "nil ladder", ladder: nil, rules: []Rule{{Tool: "a", Level: "public"}}},
		{name: "nil ladder no rules", ladder: nil},
		{name: "unknown level", ladder: l, rules: []Rule{{Tool: "a", Level: "admin"}}, unknownLevel: true},
		{name: "unknown level on pattern", ladder: l, rules: []Rule{{Tool: "a*", Level: "observer"}}, unknownLevel: true},
		{name: "empty level", ladder: l, rules: []Rule{{Tool: "a", Level: ""}}, unknownLevel: true},
		{name: "level of another case", ladder: l, rules: []Rule{{Tool: "a", Level: "Public"}}, unknownLevel: true},
		{name: "empty tool", ladder: l, rules: []Rule{{Tool: "", Level: "public"}}},
		{name: "tool too long", ladder: l, rules: []Rule{{Tool: strings.Repeat("t", maxNameLen+1), Level: "public"}}},
		{name: "tool with newline", ladder: l, rules: []Rule{{Tool: "a\nb", Level: "public"}}},
		{name: "tool with DEL", ladder: l, rules: []Rule{{Tool: "a\x7f", Level: "public"}}},
		{name: "tool with C1 control", ladder: l, rules: []Rule{{Tool: "a\u009b", Level: "public"}}},
		{name: "tool invalid UTF-8", ladder: l, rules: []Rule{{Tool: "a\xff", Level: "public"}}},
		{name: "duplicate exact", ladder: l, rules: []Rule{{Tool: "a", Level: "public"}, {Tool: "a", Level: "privileged"}}},
		{name: "duplicate exact same level", ladder: l, rules: []Rule{{Tool: "a", Level: "public"}, {Tool: "a", Level: "public"}}},
		{name: "duplicate pattern", ladder: l, rules: []Rule{{Tool: "a*", Level: "public"}, {Tool: "b", Level: "public"}, {Tool: "a*", Level: "verified"}}},
		{name: "unclosed class", ladder: l, rules: []Rule{{Tool: "a[bc", Level: "public"}}},
		{name: "trailing backslash", ladder: l, rules: []Rule{{Tool: "a\\", Level: "public"}}},
		{name: "empty class", ladder: l, rules: []Rule{{Tool: "a[]", Level: "public"}}},
		{name: "backwards range", ladder: l, rules: []Rule{{Tool: "[z-a]", Level: "public"}}},
		{name: "stray bracket in pattern", ladder: l, rules: []Rule{{Tool: "a]*", Level: "public"}}},
		{name: "stray bracket", ladder: l, rules: []Rule{{Tool: "a]", Level: "public"}}},
		{name: "stray bracket after class", ladder: l, rules: []Rule{{Tool: "[a]]", Level: "public"}}},
		{name: "bad rule after good ones", ladder: l, rules: []Rule{{Tool: "a", Level: "public"}, {Tool: "b*", Level: "verified"}, {Tool: "[", Level: "public"}}},
		{name: "unknown default", ladder: l, def: "admin", unknownLevel: true},
		{name: "default from another ladder", ladder: l, rules: []Rule{{Tool: "a", Level: "public"}}, def: "autonomous", unknownLevel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPolicy(tt.ladder, tt.rules, tt.def)
			if err == nil {
				t.Fatalf("NewPolicy(%v, %q) = %v, want error", tt.rules, tt.def, p)
			}
			if p != nil {
				t.Errorf("NewPolicy returned policy %v with error %v", p, err)
			}
			if got := errors.Is(err, ErrUnknownLevel); got != tt.unknownLevel {
				t.Errorf("errors.Is(%v, ErrUnknownLevel) = %v, want %v", err, got, tt.unknownLevel)
			}
		})
	}
}

func TestNewPolicyToolLimit(t *testing.T) {
	tool := strings.Repeat("t", maxNameLen)
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: tool, Level: "verified"}}, "")
	if lv, ok := p.Required(tool); !ok || lv != 1 {
		t.Errorf("Required(%d-byte tool) = %d, %v; want 1, true", len(tool), lv, ok)
	}
}

// Tool names may be any printable UTF-8, not only the ladder's alphabet.
func TestPolicyUnicodeTools(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{
		{Tool: "outil/écrire", Level: "privileged"},
		{Tool: "outil/*", Level: "public"},
		{Tool: "ツール?", Level: "verified"},
	}, "")
	tests := []struct {
		tool string
		want Level
	}{
		{"outil/écrire", 2},
		{"outil/lire", 0},
		{"ツール1", 1},
	}
	for _, tt := range tests {
		if lv, ok := p.Required(tt.tool); !ok || lv != tt.want {
			t.Errorf("Required(%q) = %d, %v; want %d, true", tt.tool, lv, ok, tt.want)
		}
	}
}
