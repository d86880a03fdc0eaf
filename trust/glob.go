package trust

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// A glob is a compiled tool-name pattern. Its syntax:
//
//   - '*' matches any run of characters, including none;
//   - '?' matches exactly one character;
//   - '[abc]' matches one of the listed characters, '[a-z]' one in the
//     range, and '[!abc]' or '[^abc]' one not listed;
//   - '\c' matches the character c itself.
//
// Unlike path.Match, '*' also matches '/', so a pattern such as "github*"
// covers tool names of any shape.
type glob struct {
	source string
	elems  []globElem
}

type globKind uint8

const (
	globLiteral globKind = iota // one exact rune
	globAny                     // ?
	globStar                    // *
	globClass                   // [...]
)

type globElem struct {
	kind   globKind
	r      rune        // globLiteral
	negate bool        // globClass
	ranges []runeRange // globClass
}

type runeRange struct{ lo, hi rune }

// isPattern reports whether s uses any glob syntax. A stray ']' counts, so
// that compileGlob rejects it rather than it becoming part of an exact name.
func isPattern(s string) bool { return strings.ContainsAny(s, `*?[]\`) }

// compileGlob parses pattern, returning an error that says what is wrong
// and where.
func compileGlob(pattern string) (*glob, error) {
	g := &glob{source: pattern}
	for i := 0; i < len(pattern); {
		r, size := utf8.DecodeRuneInString(pattern[i:])
		if r == utf8.RuneError && size == 1 {
			return nil, fmt.Errorf("pattern %q: invalid UTF-8 at byte %d", pattern, i)
		}
		switch r {
		case '*':
			// Collapse runs of stars: they match the same strings.
			if n := len(g.elems); n == 0 || g.elems[n-1].kind != globStar {
				g.elems = append(g.elems, globElem{kind: globStar})
			}
			i += size
		case '?':
			g.elems = append(g.elems, globElem{kind: globAny})
			i += size
		case '\\':
			i += size
			if i >= len(pattern) {
				return nil, fmt.Errorf("pattern %q: trailing backslash escapes nothing", pattern)
			}
			r, size = utf8.DecodeRuneInString(pattern[i:])
			g.elems = append(g.elems, globElem{kind: globLiteral, r: r})
			i += size
		case '[':
			e, n, err := compileClass(pattern, i)
			if err != nil {
				return nil, err
			}
			g.elems = append(g.elems, e)
			i += n
		case ']':
			return nil, fmt.Errorf("pattern %q: ']' at byte %d closes no '['; write \\] for a literal", pattern, i)
		default:
			g.elems = append(g.elems, globElem{kind: globLiteral, r: r})
			i += size
		}
	}
	return g, nil
}

// compileClass parses the class starting at pattern[start] == '[' and
// returns it with the number of bytes it spans.
func compileClass(pattern string, start int) (globElem, int, error) {
	e := globElem{kind: globClass}
	i := start + 1
	if i < len(pattern) && (pattern[i] == '!' || pattern[i] == '^') {
		e.negate = true
		i++
	}
	next := func() (rune, error) {
		if i >= len(pattern) {
			return 0, fmt.Errorf("pattern %q: '[' at byte %d is never closed", pattern, start)
		}
		r, size := utf8.DecodeRuneInString(pattern[i:])
		if r == '\\' {
			i += size
			if i >= len(pattern) {
				return 0, fmt.Errorf("pattern %q: '[' at byte %d is never closed", pattern, start)
			}
			r, size = utf8.DecodeRuneInString(pattern[i:])
		}
		i += size
		return r, nil
	}
	for {
		if i >= len(pattern) {
			return e, 0, fmt.Errorf("pattern %q: '[' at byte %d is never closed", pattern, start)
		}
		if pattern[i] == ']' {
			if len(e.ranges) == 0 {
				return e, 0, fmt.Errorf("pattern %q: empty character class at byte %d", pattern, start)
			}
			return e, i + 1 - start, nil
		}
		lo, err := next()
		if err != nil {
			return e, 0, err
		}
		hi := lo
		if i+1 < len(pattern) && pattern[i] == '-' && pattern[i+1] != ']' {
			i++
			if hi, err = next(); err != nil {
				return e, 0, err
			}
			if hi < lo {
				return e, 0, fmt.Errorf("pattern %q: range %c-%c at byte %d runs backwards", pattern, lo, hi, start)
			}
		}
		e.ranges = append(e.ranges, runeRange{lo, hi})
	}
}

// match reports whether name matches the whole pattern. It backtracks only
// to the most recent star, so it runs in O(len(pattern) × len(name)).
func (g *glob) match(name string) bool {
	p, n := 0, 0
	starP, starN := -1, 0
	for n < len(name) {
		r, size := utf8.DecodeRuneInString(name[n:])
		if r == utf8.RuneError && size == 1 {
			r = -1 // an invalid byte is no character a pattern can spell, not U+FFFD
		}
		if p < len(g.elems) {
			e := &g.elems[p]
			switch e.kind {
			case globStar:
				starP, starN = p, n
				p++
				continue
			case globAny:
				p, n = p+1, n+size
				continue
			case globLiteral:
				if e.r == r {
					p, n = p+1, n+size
					continue
				}
			case globClass:
				if e.matchClass(r) {
					p, n = p+1, n+size
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		// Let the last star swallow one more character and retry.
		_, size = utf8.DecodeRuneInString(name[starN:])
		starN += size
		p, n = starP+1, starN
	}
	for p < len(g.elems) && g.elems[p].kind == globStar {
		p++
	}
	return p == len(g.elems)
}

func (e *globElem) matchClass(r rune) bool {
	in := false
	for _, rg := range e.ranges {
		if rg.lo <= r && r <= rg.hi {
			in = true
			break
		}
	}
	return in != e.negate
}
