package trust

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern string
		name    string
		want    bool
	}{
		// '*' matches any run, including none and including '/'.
		{"*", "", true},
		{"*", "a", true},
		{"*", "a/b/c", true},
		{"**", "", true},
		{"**", "x/y", true},
		{"github*", "github", true},
		{"github*", "github/create_issue", true},
		{"github*", "github.repos/list", true},
		{"github*", "gitlab", false},
		{"github*", "xgithub", false},
		{"*.read", "fs.read", true},
		{"*.read", "fs/dir.read", true},
		{"*.read", "fs.reader", false},
		{"a*b", "ab", true},
		{"a*b", "a/b", true},
		{"a*b", "axxxb", true},
		{"a*b", "a", false},
		{"a*b", "abc", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abcbc", true},
		{"a*b*c", "acb", false},
		{"*ana", "banana", true},
		{"*an", "banana", false},
		{"*/*", "a/b", true},
		{"*/*", "ab", false},
		{"a**", "abc", true},

		// '?' matches exactly one character, not one byte.
		{"?", "a", true},
		{"?", "/", true},
		{"?", "é", true},
		{"?", "世", true},
		{"?", "", false},
		{"?", "ab", false},
		{"a?c", "abc", true},
		{"a?c", "a/c", true},
		{"a?c", "ac", false},
		{"??", "éé", true},
		{"??", "é", false},

		// Classes.
		{"[a-z]", "m", true},
		{"[a-z]", "a", true},
		{"[a-z]", "z", true},
		{"[a-z]", "M", false},
		{"[a-z]", "", false},
		{"[a-z]", "ab", false},
		{"[abc]", "b", true},
		{"[abc]", "d", false},
		{"[a-cx-z]", "y", true},
		{"[a-cx-z]", "m", false},
		{"[!x]", "y", true},
		{"[!x]", "x", false},
		{"[!x]", "", false},
		{"[^x]", "y", true},
		{"[^x]", "x", false},
		{"[!a-c]", "b", false},
		{"[!a-c]", "d", true},
		{"[a-]", "a", true},
		{"[a-]", "-", true},
		{"[a-]", "b", false},
		{"[\\]]", "]", true},
		{"[\\]]", "\\", false},
		{"[\\-]", "-", true},
		{"[[]", "[", true},
		{"[é-ë]", "ê", true},
		{"[é-ë]", "e", false},
		{"x[*]", "x*", true},
		{"x[*]", "xy", false},
		{"x[?]", "x?", true},
		{"x[?]", "xy", false},
		{"fs.[rw]*", "fs.read", true},
		{"fs.[rw]*", "fs.write", true},
		{"fs.[rw]*", "fs.delete", false},

		// Escapes.
		{"\\*", "*", true},
		{"\\*", "a", false},
		{"\\*", "", false},
		{"\\**", "*", true},
		{"\\**", "*abc", true},
		{"\\**", "abc", false},
		{"a\\?", "a?", true},
		{"a\\?", "ab", false},
		{"\\[x\\]", "[x]", true},
		{"\\[x\\]", "x", false},
		{"\\\\", "\\", true},
		{"\\a", "a", true},
		{"\\é", "é", true},

		// Literals match whole names only.
		{"fs.read", "fs.read", true},
		{"fs.read", "fs.rea", false},
		{"fs.read", "fs.readx", false},
		{"", "", true},
		{"", "a", false},

		// An invalid byte in a name is a character no literal or range
		// names, but '?', '*' and negated classes match it.
		{"a\uFFFD", "a\xff", false},
		{"a\uFFFD", "a\uFFFD", true},
		{"[\uFFFD]", "\xff", false},
		{"?", "\xff", true},
		{"*", "\xff\xfe", true},
		{"[!a]", "\xff", true},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.pattern)+"/"+strconv.Quote(tt.name), func(t *testing.T) {
			g, err := compileGlob(tt.pattern)
			if err != nil {
				t.Fatalf("compileGlob(%q): %v", tt.pattern, err)
			}
			if got := g.match(tt.name); got != tt.want {
				t.Errorf("%q.match(%q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
			}
		})
	}
}

func TestCompileGlobErrors(t *testing.T) {
	tests := []struct {
		pattern string
		errText string // part of the message
	}{
		{"[", "never closed"},
		{"[a", "never closed"},
		{"[a-", "never closed"},
		{"[a-z", "never closed"},
		{"[!", "never closed"},
		{"x[\\", "never closed"},
		{"[\\]", "never closed"},
		{"[a-\\", "never closed"},
		{"a\\", "trailing backslash"},
		{"\\", "trailing backslash"},
		{"[]", "empty character class"},
		{"[!]", "empty character class"},
		{"[^]", "empty character class"},
		{"a[]b", "empty character class"},
		{"[z-a]", "runs backwards"},
		{"[b-a]", "runs backwards"},
		{"]", "closes no '['"},
		{"a]", "closes no '['"},
		{"a]*", "closes no '['"},
		{"[a]]", "closes no '['"},
		{"\xff", "invalid UTF-8"},
		{"a*\xff", "invalid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.pattern), func(t *testing.T) {
			g, err := compileGlob(tt.pattern)
			if err == nil {
				t.Fatalf("compileGlob(%q) = %v, want error", tt.pattern, g)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("compileGlob(%q) error = %q, want it to mention %q", tt.pattern, err, tt.errText)
			}
		})
	}
}

func TestIsPattern(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{"fs.read", false},
		{"github/create_issue", false},
		{"a-b_c.d", false},
		{"*", true},
		{"a?", true},
		{"[a]", true},
		{"a]", true},
		{"a\\b", true},
	}
	for _, tt := range tests {
		if got := isPattern(tt.s); got != tt.want {
			t.Errorf("isPattern(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}

// naiveMatch is an obviously correct, if slow, reference for glob.match:
// a table over every (element, character) suffix pair. An invalid byte in
// name is one character that equals no rune a pattern can spell.
func naiveMatch(elems []globElem, name string) bool {
	var chars []rune
	for i := 0; i < len(name); {
		r, size := utf8.DecodeRuneInString(name[i:])
		if r == utf8.RuneError && size == 1 {
			r = -1
		}
		chars = append(chars, r)
		i += size
	}
	// ok[p][n] reports whether elems[p:] matches chars[n:].
	ok := make([][]bool, len(elems)+1)
	for p := range ok {
		ok[p] = make([]bool, len(chars)+1)
	}
	ok[len(elems)][len(chars)] = true
	for p := len(elems) - 1; p >= 0; p-- {
		for n := len(chars); n >= 0; n-- {
			e := elems[p]
			switch {
			case e.kind == globStar:
				ok[p][n] = ok[p+1][n] || n < len(chars) && ok[p][n+1]
			case n == len(chars):
				ok[p][n] = false
			case e.kind == globAny:
				ok[p][n] = ok[p+1][n+1]
			case e.kind == globLiteral:
				ok[p][n] = e.r == chars[n] && ok[p+1][n+1]
			case e.kind == globClass:
				in := false
				for _, rg := range e.ranges {
					if rg.lo <= chars[n] && chars[n] <= rg.hi {
						in = true
					}
				}
				ok[p][n] = in != e.negate && ok[p+1][n+1]
			}
		}
	}
	return ok[0][0]
}

// escapeGlob returns a pattern matching exactly s.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func FuzzGlob(f *testing.F) {
	for _, seed := range [][2]string{
		{"*", ""},
		{"*", "a/b"},
		{"a*b", "a/b"},
		{"a*b*c", "abcbc"},
		{"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaa"},
		{"[a-z]?", "b1"},
		{"[!x]", "x"},
		{"[^a-c]*", "d/e"},
		{"\\*", "*"},
		{"\\", "x"},
		{"[]", "x"},
		{"[z-a]", "m"},
		{"a]", "a]"},
		{"fs.read", "fs.read"},
		{"fs.read", "fs.reader"},
		{"é?", "éé"},
		{"a\uFFFD", "a\xff"},
		{"\uFFFD", "\xff"},
		{"?", "\xff"},
		{"\xff", "\xff"},
	} {
		f.Add(seed[0], seed[1])
	}
	star, err := compileGlob("*")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if !star.match(name) {
			t.Errorf("\"*\".match(%q) = false, want true", name)
		}
		if utf8.ValidString(name) {
			// Escaping every metacharacter gives a pattern for the name
			// itself and nothing else.
			esc := escapeGlob(name)
			eg, err := compileGlob(esc)
			if err != nil {
				t.Fatalf("compileGlob(%q) for escaped %q: %v", esc, name, err)
			}
			if !eg.match(name) {
				t.Errorf("%q.match(%q) = false, want true", esc, name)
			}
			if got, want := eg.match(pattern), pattern == name; got != want {
				t.Errorf("%q.match(%q) = %v, want %v", esc, pattern, got, want)
			}
		}

		g, err := compileGlob(pattern)
		if err != nil {
			return
		}
		if !utf8.ValidString(pattern) && !strings.ContainsAny(pattern, `[\`) {
			t.Errorf("compileGlob(%q) accepted invalid UTF-8", pattern)
		}
		if g.source != pattern {
			t.Errorf("source = %q, want %q", g.source, pattern)
		}
		got := g.match(name)
		if want := naiveMatch(g.elems, name); got != want {
			t.Errorf("%q.match(%q) = %v, reference says %v", pattern, name, got, want)
		}
		if !strings.ContainsAny(pattern, `*?[]\`) {
			if want := pattern == name; got != want {
				t.Errorf("%q.match(%q) = %v, want %v", pattern, name, got, want)
			}
			if !g.match(pattern) {
				t.Errorf("%q.match(itself) = false, want true", pattern)
			}
		}
	})
}
