package trust

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestBuiltinLadders(t *testing.T) {
	tests := []struct {
		name   string
		ladder *Ladder
		levels []string
	}{
		{DefaultLadderName, DefaultLadder(), []string{"public", "verified", "privileged"}},
		{AumOSLadderName, AumOSLadder(), []string{"observer", "monitor", "suggest", "act-with-approval", "act-and-report", "autonomous"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.ladder
			if got := l.Name(); got != tt.name {
				t.Errorf("Name() = %q, want %q", got, tt.name)
			}
			if got := l.Levels(); !slices.Equal(got, tt.levels) {
				t.Errorf("Levels() = %q, want %q", got, tt.levels)
			}
			if got := l.Lowest(); got != 0 {
				t.Errorf("Lowest() = %d, want 0", got)
			}
			if got, want := l.Highest(), Level(len(tt.levels)-1); got != want {
				t.Errorf("Highest() = %d, want %d", got, want)
			}
			for i, name := range tt.levels {
				lv, err := l.Parse(name)
				if err != nil {
					t.Errorf("Parse(%q): %v", name, err)
				}
				if lv != Level(i) {
					t.Errorf("Parse(%q) = %d, want %d", name, lv, i)
				}
				if got := l.LevelName(Level(i)); got != name {
					t.Errorf("LevelName(%d) = %q, want %q", i, got, name)
				}
			}
			if got, want := l.String(), tt.name+": "+strings.Join(tt.levels, " < "); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}

			got, err := BuiltinLadder(tt.name)
			if err != nil {
				t.Fatalf("BuiltinLadder(%q): %v", tt.name, err)
			}
			if got != l {
				t.Errorf("BuiltinLadder(%q) = %v, want %v", tt.name, got, l)
			}
		})
	}
}

func TestBuiltinLadderUnknown(t *testing.T) {
	for _, name := range []string{"", "Default", "aumOS", "custom", "default "} {
		t.Run(strconv.Quote(name), func(t *testing.T) {
			l, err := BuiltinLadder(name)
			if err == nil {
				t.Fatalf("BuiltinLadder(%q) = %v, want error", name, l)
			}
			if l != nil {
				t.Errorf("BuiltinLadder(%q) returned ladder %v with error", name, l)
			}
		})
	}
}

func TestNewLadder(t *testing.T) {
	levels := []string{"low", "mid-1", "Mid_2", "high.3"}
	l, err := NewLadder("custom", levels...)
	if err != nil {
		t.Fatalf("NewLadder: %v", err)
	}
	if got := l.Name(); got != "custom" {
		t.Errorf("Name() = %q, want %q", got, "custom")
	}
	if got := l.Levels(); !slices.Equal(got, levels) {
		t.Errorf("Levels() = %q, want %q", got, levels)
	}
	if got := l.Highest(); got != 3 {
		t.Errorf("Highest() = %d, want 3", got)
	}

	// The ladder is immutable: neither the caller's slice nor the one
	// Levels returns can change it.
	levels[0] = "changed"
	got := l.Levels()
	got[1] = "changed"
	if got := l.Levels(); !slices.Equal(got, []string{"low", "mid-1", "Mid_2", "high.3"}) {
		t.Errorf("after mutating slices, Levels() = %q, want it unchanged", got)
	}
	if got := l.LevelName(0); got != "low" {
		t.Errorf("LevelName(0) = %q, want %q", got, "low")
	}
}

func TestNewLadderSingleLevel(t *testing.T) {
	l, err := NewLadder("flat", "only")
	if err != nil {
		t.Fatalf("NewLadder: %v", err)
	}
	if l.Lowest() != l.Highest() {
		t.Errorf("Lowest() = %d, Highest() = %d, want equal", l.Lowest(), l.Highest())
	}
}

func TestNewLadderMaxLevels(t *testing.T) {
	levels := make([]string, MaxLevels)
	for i := range levels {
		levels[i] = "l" + strconv.Itoa(i)
	}
	l, err := NewLadder("big", levels...)
	if err != nil {
		t.Fatalf("NewLadder with %d levels: %v", MaxLevels, err)
	}
	if got, want := l.Highest(), Level(MaxLevels-1); got != want {
		t.Errorf("Highest() = %d, want %d", got, want)
	}
	if _, err := NewLadder("big", append(levels, "one-more")...); err == nil {
		t.Errorf("NewLadder with %d levels: got nil error, want error", MaxLevels+1)
	}
}

func TestNewLadderErrors(t *testing.T) {
	long := strings.Repeat("a", maxNameLen+1)
	tests := []struct {
		name   string
		ladder string
		levels []string
	}{
		{"no levels", "l", nil},
		{"empty levels", "l", []string{}},
		{"duplicate level", "l", []string{"a", "b", "a"}},
		{"duplicate adjacent", "l", []string{"a", "a"}},
		{"empty level name", "l", []string{"a", ""}},
		{"level with space", "l", []string{"a b"}},
		{"level with colon", "l", []string{"a:b"}},
		{"level with slash", "l", []string{"a/b"}},
		{"level with star", "l", []string{"a*"}},
		{"level with newline", "l", []string{"a\n"}},
		{"level with non-ASCII", "l", []string{"café"}},
		{"level too long", "l", []string{long}},
		{"empty ladder name", "", []string{"a"}},
		{"ladder name with space", "my ladder", []string{"a"}},
		{"ladder name with NUL", "l\x00", []string{"a"}},
		{"ladder name too long", long, []string{"a"}},
		{"too many levels", "l", func() []string {
			s := make([]string, MaxLevels+1)
			for i := range s {
				s[i] = "l" + strconv.Itoa(i)
			}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewLadder(tt.ladder, tt.levels...)
			if err == nil {
				t.Fatalf("NewLadder(%q, %q) = %v, want error", tt.ladder, tt.levels, l)
			}
			if l != nil {
				t.Errorf("NewLadder returned ladder %v with error %v", l, err)
			}
		})
	}
}

func TestNewLadderNameLimit(t *testing.T) {
	name := strings.Repeat("a", maxNameLen)
	if _, err := NewLadder(name, name); err != nil {
		t.Errorf("NewLadder with %d-byte names: %v", maxNameLen, err)
	}
}

func TestLadderParseUnknown(t *testing.T) {
	l := DefaultLadder()
	for _, name := range []string{"", "Public", "observer", "public ", "admin"} {
		t.Run(strconv.Quote(name), func(t *testing.T) {
			lv, err := l.Parse(name)
			if err == nil {
				t.Fatalf("Parse(%q) = %d, want error", name, lv)
			}
			if !errors.Is(err, ErrUnknownLevel) {
				t.Errorf("Parse(%q) error %v does not wrap ErrUnknownLevel", name, err)
			}
			// The message helps the operator by listing what there is.
			if !strings.Contains(err.Error(), "public < verified < privileged") {
				t.Errorf("Parse(%q) error %q does not list the levels", name, err)
			}
		})
	}
}

func TestLadderLevelNameOutOfRange(t *testing.T) {
	l := DefaultLadder()
	for _, lv := range []Level{-1, 3, 64, -1 << 31} {
		if got := l.LevelName(lv); got != "" {
			t.Errorf("LevelName(%d) = %q, want \"\"", lv, got)
		}
	}
}
