package mcpgate

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/dlclark/regexp2/v2"
	"github.com/tiktoken-go/tokenizer"
)

// o200kPattern is o200k_base's split pattern as tiktoken publishes it.
const o200kPattern = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// o200kSeeds are texts whose pieces exercise every alternative of the
// pattern, and the places where one gives way to the next.
var o200kSeeds = []string{
	"", "ok", "Hello, World!", "  hello", "a   b", "a\t!b", "x \n\n  y", "end  ", " ",
	"ABCdef GHI jKL", "it's THEY'RE we'Ve I'M you'll he'D 'x", "'s", "can't'", "'", "O'Reilly",
	"12345 1 22 333 4444", "3.14159e-10", "a1b2", " !?//\n\r/x", "!\n/", "https://example.com/a/b?q=1",
	`{"id": 1234, "name": "Widget Pro", "tags": ["a", "b"]}`, "line1\r\nline2\n\n\tindented",
	"\v\f\x00\x01\x1f\x7f~", "\x7fabc", "x\x7f!", "!\x7f?", " \x7f", "  \x7f", "tab\there", "  \n  ", "\n", "\r\n\r\n  x", " ,", "  ,", "\t,x",
}

// TestO200kPieces runs FuzzO200kPieces' check on longer texts too.
func TestO200kPieces(t *testing.T) {
	re := regexp2.MustCompile(o200kPattern, regexp2.None)
	long := strings.Join(o200kSeeds, " ")
	for _, s := range append(o200kSeeds, long, strings.Repeat(long, 7)) {
		checkPieces(t, re, s)
	}
}

func checkPieces(t *testing.T, re *regexp2.Regexp, s string) {
	t.Helper()
	var want []string
	m, err := re.FindStringMatch(s)
	for ; m != nil && err == nil; m, err = re.FindNextMatch(m) {
		want = append(want, m.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Collect(o200kPieces(s))
	if !slices.Equal(got, want) {
		t.Fatalf("pieces of %q:\n got %q\nwant %q", s, got, want)
	}
}

// FuzzO200kPieces: o200kPieces cuts any ASCII text where the pattern
// does, run by regexp2 — the tokenizer's own matcher.
func FuzzO200kPieces(f *testing.F) {
	for _, s := range o200kSeeds {
		f.Add(s)
	}
	re := regexp2.MustCompile(o200kPattern, regexp2.None)
	f.Fuzz(func(t *testing.T, s string) {
		checkPieces(t, re, toASCII(s))
	})
}

// FuzzO200kCount: the counter's count of any text is the tokenizer's —
// and one for each DEL, which the tokenizer skips — whether its pieces
// are remembered or not.
func FuzzO200kCount(f *testing.F) {
	for _, s := range o200kSeeds {
		f.Add(s)
	}
	f.Add("naïve café, 日本語 and emoji 🎉 mixed with ASCII")
	codec, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		f.Fatal(err)
	}
	c := &TiktokenCounter{}
	f.Fuzz(func(t *testing.T, s string) {
		for _, s := range []string{s, toASCII(s)} {
			want, err := tokenizerCount(codec, s)
			if err != nil {
				continue // invalid UTF-8, which the tokenizer refuses
			}
			for range 2 { // pieces unknown, then remembered
				got, err := c.countText(s)
				if err != nil || got != want {
					t.Fatalf("count of %q = %d, %v; the tokenizer's is %d", s, got, err, want)
				}
			}
		}
	})
}

// tokenizerCount is the tokenizer's count of s, and one for each DEL.
func tokenizerCount(codec tokenizer.Codec, s string) (int64, error) {
	n, err := codec.Count(s)
	return int64(n) + int64(strings.Count(s, "\x7f")), err
}

// TestDelCounted: DEL, which the tokenizer skips, costs a token each,
// in ASCII texts and others.
func TestDelCounted(t *testing.T) {
	c := &TiktokenCounter{}
	for s, want := range map[string]int64{"\x7f": 1, "\x7f\x7f\x7f": 3, "ok\x7f": 2, "é\x7f": 2} {
		if n, err := c.countText(s); err != nil || n != want {
			t.Errorf("count of %q = %d, %v; want %d", s, n, err, want)
		}
	}
}

// toASCII folds s onto ASCII, so that fuzzed bytes reach every ASCII
// character.
func toASCII(s string) string {
	b := []byte(s)
	for i := range b {
		b[i] &= 0x7f
	}
	return string(b)
}

// BenchmarkCountText counts the tokens of texts through the counter, whose
// pieces it has seen, against the tokenizer's own Count of the same text
// in the same run: a tool's one-word answer, 10 KB of JSON, and 10 KB of
// English prose; and, the counter's worst case, 10 KB texts of made-up
// words, each text new to it.
func BenchmarkCountText(b *testing.B) {
	texts := map[string]string{
		"word":  "ok",
		"json":  strings.Repeat(`{"id": 1234, "name": "Widget Pro", "price": 19.99, "tags": ["new", "sale"], "stock": true}`+"\n", 110),
		"prose": strings.Repeat("The gateway counts what each tool hands the model, so that a session's budget holds; it can't be fooled by keys in another case. ", 80),
	}
	codec, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"word", "json", "prose"} {
		text := texts[name]
		b.Run(name+"/tokenizer", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := codec.Count(text); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/counter", func(b *testing.B) {
			c := &TiktokenCounter{}
			want, _ := tokenizerCount(codec, text)
			if n, err := c.countText(text); err != nil || n != want { // and learn its pieces
				b.Fatalf("count %d, %v; want %d", n, err, want)
			}
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.countText(text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	r := rand.New(rand.NewPCG(1, 2))
	unseen := make([]string, 64)
	for i := range unseen {
		var t strings.Builder
		for t.Len() < 10_000 {
			t.WriteByte(' ')
			for range 3 + r.IntN(8) {
				t.WriteByte(byte('a' + r.IntN(26)))
			}
		}
		unseen[i] = t.String()
	}
	counter := &TiktokenCounter{}
	for name, count := range map[string]func(string) error{
		"unseen/tokenizer": func(s string) error { _, err := codec.Count(s); return err },
		"unseen/counter":   func(s string) error { _, err := counter.countText(s); return err },
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(10_000)
			i := 0
			for b.Loop() {
				if err := count(unseen[i%len(unseen)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestCounterConcurrent: goroutines counting at once, while the pieces
// are learned and forgotten, each get the tokenizer's count.
func TestCounterConcurrent(t *testing.T) {
	codec, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		t.Fatal(err)
	}
	texts := append([]string{strings.Join(o200kSeeds, " ")}, o200kSeeds...)
	want := make([]int64, len(texts))
	for i, s := range texts {
		n, err := tokenizerCount(codec, s)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = n
	}
	c := &TiktokenCounter{}
	if err := c.load(); err != nil || c.pieces == nil {
		t.Fatalf("load: %v; pieces %v", err, c.pieces)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for round := range 50 {
				if g == 0 && round%10 == 0 {
					c.pieces.m.Clear() // forgotten, as when maxPieces is passed
				}
				for i, s := range texts {
					if n, err := c.countText(s); err != nil || n != want[i] {
						t.Errorf("count of %q = %d, %v; want %d", s, n, err, want[i])
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestPieceCountsBounded: the pieces remembered are at most maxPieces,
// none longer than maxPieceBytes, and each a copy, not a view of the
// text it was cut from.
func TestPieceCountsBounded(t *testing.T) {
	var pc pieceCounts
	text := strings.Repeat("x", 100)
	pc.add(text[:maxPieceBytes+1], 1)
	if _, ok := pc.get(text[:maxPieceBytes+1]); ok {
		t.Fatal("a piece longer than maxPieceBytes is remembered")
	}
	pc.add(text[:5], 1)
	pc.m.Range(func(k, _ any) bool {
		p := unsafe.StringData(k.(string))
		start := unsafe.StringData(text)
		if uintptr(unsafe.Pointer(p)) >= uintptr(unsafe.Pointer(start)) && uintptr(unsafe.Pointer(p)) < uintptr(unsafe.Pointer(start))+uintptr(len(text)) {
			t.Fatal("a remembered piece holds on to the text it was cut from")
		}
		return true
	})
	for i := range maxPieces + 100 {
		pc.add(strconv.Itoa(i), 1)
	}
	n := 0
	pc.m.Range(func(_, _ any) bool { n++; return true })
	if n > maxPieces || pc.size.Load() > maxPieces {
		t.Fatalf("%d pieces remembered (size %d), want at most %d", n, pc.size.Load(), maxPieces)
	}
	if _, ok := pc.get(strconv.Itoa(maxPieces + 99)); !ok {
		t.Fatal("the newest piece was not remembered")
	}
}
