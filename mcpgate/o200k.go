package mcpgate

import (
	"iter"
	"strings"
	"sync"
	"sync/atomic"
)

// o200kPieces yields the pieces that o200k_base's split pattern cuts s
// into, when s is ASCII: the pattern's alternatives tried in order at
// each position, for the classes it names (\p{L}, \p{N}, \s) as they
// are in ASCII, and as regexp2 — the tokenizer's matcher — runs them,
// which in two places is not as a backtracking matcher would (del, and
// the line breaks of \s*[\r\n]+, below). The tokenizer then
// encodes each piece on its own, so a text's tokens are the sum of its
// pieces'. s must be ASCII (isASCII): beyond it, the classes hold
// characters this does not know.
//
// The pattern, as tiktoken publishes it for o200k_base:
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|\p{N}{1,3}
//	| ?[^\s\p{L}\p{N}]+[\r\n/]*
//	|\s*[\r\n]+
//	|\s+(?!\S)
//	|\s+
//
// FuzzO200kPieces holds this to the pattern run by regexp2, and
// FuzzO200kCount the counts to the tokenizer's.
func o200kPieces(s string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for i := 0; i < len(s); {
			if s[i] == del {
				i++ // in no piece: see del
				continue
			}
			end := o200kPieceEnd(s, i)
			if !yield(s[i:end]) {
				return
			}
			i = end
		}
	}
}

// o200kPieceEnd returns where the piece that starts at s[i] ends.
func o200kPieceEnd(s string, i int) int {
	n := len(s)
	// A word: an optional lead (not a letter, a digit or a line break),
	// capitals, small letters, and an English contraction. Capitals
	// followed by small letters take the first alternative, capitals
	// alone the second; their sets are disjoint, so no backtracking
	// changes where either ends.
	j := i
	if lead(s[j]) {
		j++
	}
	k := j
	for k < n && upper(s[k]) {
		k++
	}
	m := k
	for m < n && lower(s[m]) {
		m++
	}
	if m > k || k > j {
		return contraction(s, m)
	}
	c := s[i]
	switch {
	case digit(c): // \p{N}{1,3}
		j := i + 1
		for j < n && j < i+3 && digit(s[j]) {
			j++
		}
		return j
	case symbol(c) || c == ' ' && i+1 < n && symbol(s[i+1]): // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
		j := i + 1
		for j < n && symbol(s[j]) {
			j++
		}
		for j < n && (s[j] == '\r' || s[j] == '\n' || s[j] == '/') {
			j++
		}
		return j
	}
	// Whitespace (every other ASCII character but del is matched above).
	// \s*[\r\n]+ takes the spaces up to the first line break and the
	// line breaks after it: regexp2 does not give back the line breaks
	// its \s* took, as a backtracking matcher would.
	j = i
	for j < n && space(s[j]) && !lineBreak(s[j]) {
		j++
	}
	if j < n && lineBreak(s[j]) {
		for j < n && lineBreak(s[j]) {
			j++
		}
		return j
	}
	if j < n && j-i >= 2 { // \s+(?!\S): all but the space before what follows
		return j - 1
	}
	return j // \s+(?!\S) at the end, or \s+
}

// contraction returns where an English contraction ('s, 't, 're, 've,
// 'm, 'll, 'd, in any case) at s[i] ends, or i.
func contraction(s string, i int) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return i
	}
	switch s[i+1] | 0x20 { // lower case, for letters
	case 's', 't', 'm', 'd':
		return i + 2
	}
	if i+2 < len(s) {
		a, b := s[i+1]|0x20, s[i+2]|0x20
		if b == 'e' && (a == 'r' || a == 'v') || a == 'l' && b == 'l' {
			return i + 3
		}
	}
	return i
}

func upper(c byte) bool  { return 'A' <= c && c <= 'Z' }
func lower(c byte) bool  { return 'a' <= c && c <= 'z' }
func letter(c byte) bool { return upper(c) || lower(c) }
func digit(c byte) bool  { return '0' <= c && c <= '9' }

func lineBreak(c byte) bool { return c == '\r' || c == '\n' }

// space is \s in ASCII: .NET's [\f\n\r\t\v\x85\p{Z}].
func space(c byte) bool { return c == ' ' || '\t' <= c && c <= '\r' }

// lead is [^\r\n\p{L}\p{N}], at a piece's start, where del never is.
func lead(c byte) bool { return c != '\r' && c != '\n' && !letter(c) && !digit(c) }

// symbol is [^\s\p{L}\p{N}].
func symbol(c byte) bool { return !space(c) && !letter(c) && !digit(c) && c != del }

// del, U+007F, is in none of the pattern's classes as regexp2 — the
// tokenizer's matcher — runs it, not even the negated ones: it is in no
// piece, and the tokenizer counts no token for it, though it reaches the
// model. countText counts one for each (a byte-level encoding spends at
// most one token a byte), so that a text can't pass for free.
const del = 0x7f

// isASCII reports whether s is all ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// countText counts the tokens of s: the tokenizer's count, and one for
// each del, which it skips.
func (c *TiktokenCounter) countText(s string) (int64, error) {
	if err := c.load(); err != nil {
		return 0, err
	}
	n, err := c.countPieces(s)
	return n + int64(strings.Count(s, "\x7f")), err
}

// countPieces counts the tokens the tokenizer counts in s. With
// o200k_base, an ASCII text is cut into its pieces here, and the tokens
// of the pieces seen before are remembered: the tokenizer's regular
// expression, most of its time, runs only for pieces not seen before —
// each on its own, if they are few, or else the whole text at once, as
// it would have.
func (c *TiktokenCounter) countPieces(s string) (int64, error) {
	if c.pieces == nil || !isASCII(s) {
		n, err := c.codec.Count(s)
		return int64(n), err
	}
	var (
		total, pieces int64
		buf           [maxNewPieces]string
		unknown       = buf[:0]
		many          = false // more unknown pieces than unknown has room for
	)
	for p := range o200kPieces(s) {
		pieces++
		if n, ok := c.pieces.get(p); ok {
			total += n
		} else if len(unknown) < cap(unknown) {
			unknown = append(unknown, p)
		} else {
			many = true
			break
		}
	}
	// Counted alone, a piece costs the tokenizer several times what it
	// costs in a text: alone only while they are a small share.
	if many || int64(len(unknown))*4 > pieces+12 {
		n, err := c.codec.Count(s)
		if err == nil {
			c.learn(unknown[:min(len(unknown), learnPerText)])
		}
		return int64(n), err
	}
	for _, p := range unknown {
		n, err := c.codec.Count(p)
		if err != nil {
			return 0, err
		}
		total += int64(n)
		c.pieces.add(p, int64(n))
	}
	return total, nil
}

// learn counts pieces alone and remembers them.
func (c *TiktokenCounter) learn(pieces []string) {
	for _, p := range pieces {
		if n, err := c.codec.Count(p); err == nil {
			c.pieces.add(p, int64(n))
		}
	}
}

const (
	// maxNewPieces is the most pieces not seen before a text's count
	// takes one by one.
	maxNewPieces = 64
	// learnPerText is how many of them a text counted whole teaches.
	learnPerText = 8
	// maxPieceBytes is the longest piece remembered.
	maxPieceBytes = 32
	// maxPieces bounds the pieces remembered: past it they are forgotten,
	// all at once, and learned again.
	maxPieces = 1 << 15
)

// pieceCounts remembers the tokens of pieces of text. It is safe for
// concurrent use; what it holds is bounded by maxPieces of maxPieceBytes.
type pieceCounts struct {
	m    sync.Map // string → int64
	size atomic.Int64
}

func (pc *pieceCounts) get(p string) (int64, bool) {
	n, ok := pc.m.Load(p)
	if !ok {
		return 0, false
	}
	return n.(int64), true
}

func (pc *pieceCounts) add(p string, n int64) {
	if len(p) > maxPieceBytes {
		return
	}
	if pc.size.Add(1) > maxPieces {
		pc.m.Clear()
		pc.size.Store(1)
	}
	// A copy: p shares the memory of the whole text it was cut from.
	if _, loaded := pc.m.LoadOrStore(strings.Clone(p), n); loaded {
		pc.size.Add(-1)
	}
}
