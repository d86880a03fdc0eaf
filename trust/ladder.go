// Package trust decides whether an agent may call a tool.
//
// Trust here is assigned, never computed: an operator places each agent on a
// Ladder of named levels, a Policy names the level each tool requires, and a
// Gate allows a call iff the agent's assigned level is at least the tool's
// required level. Nothing in this package promotes, decays or scores an
// agent. The package is pure: it does no I/O and records nothing; the
// agentsec root package audits the decisions and the assignment changes.
package trust

import (
	"errors"
	"fmt"
	"strings"
)

// Level is a position on a Ladder: 0 is the lowest level, and a higher
// Level is more trusted. Levels are only meaningful together with the
// Ladder they came from.
type Level int

// MaxLevels is the most levels a Ladder may have.
const MaxLevels = 64

// maxNameLen bounds level names, agent ids and scopes in bytes.
const maxNameLen = 256

// ErrUnknownLevel is returned, wrapped, for a level name its ladder lacks.
var ErrUnknownLevel = errors.New("unknown trust level")

// A Ladder is an ordered list of level names, lowest first. It is
// immutable and safe for concurrent use.
type Ladder struct {
	name   string
	levels []string
	index  map[string]Level
}

// Names of the built-in ladders, for BuiltinLadder.
const (
	DefaultLadderName = "default"
	AumOSLadderName   = "aumos"
)

var (
	defaultLadder = mustLadder(DefaultLadderName, "public", "verified", "privileged")
	aumosLadder   = mustLadder(AumOSLadderName,
		"observer", "monitor", "suggest", "act-with-approval", "act-and-report", "autonomous")
)

// DefaultLadder returns the built-in ladder public < verified < privileged.
func DefaultLadder() *Ladder { return defaultLadder }

// AumOSLadder returns the built-in six-level ladder observer < monitor <
// suggest < act-with-approval < act-and-report < autonomous.
func AumOSLadder() *Ladder { return aumosLadder }

// BuiltinLadder returns the built-in ladder with the given name: "default"
// or "aumos". Any other name is an error.
func BuiltinLadder(name string) (*Ladder, error) {
	switch name {
	case DefaultLadderName:
		return defaultLadder, nil
	case AumOSLadderName:
		return aumosLadder, nil
	}
	return nil, fmt.Errorf("trust: no built-in ladder %q (have %q and %q)", name, DefaultLadderName, AumOSLadderName)
}

// NewLadder returns a ladder named name whose levels are given lowest
// first. It is an error to give no levels, more than MaxLevels, an invalid
// or repeated level name, or an invalid ladder name. Names are 1 to 256
// bytes of ASCII letters, digits, '-', '_' and '.'.
func NewLadder(name string, levels ...string) (*Ladder, error) {
	if err := checkName("ladder name", name); err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	if len(levels) == 0 {
		return nil, fmt.Errorf("trust: ladder %q has no levels", name)
	}
	if len(levels) > MaxLevels {
		return nil, fmt.Errorf("trust: ladder %q has %d levels, more than %d", name, len(levels), MaxLevels)
	}
	l := &Ladder{
		name:   name,
		levels: append([]string(nil), levels...),
		index:  make(map[string]Level, len(levels)),
	}
	for i, lv := range levels {
		if err := checkName("level name", lv); err != nil {
			return nil, fmt.Errorf("trust: ladder %q: %w", name, err)
		}
		if _, dup := l.index[lv]; dup {
			return nil, fmt.Errorf("trust: ladder %q lists level %q twice", name, lv)
		}
		l.index[lv] = Level(i)
	}
	return l, nil
}

func mustLadder(name string, levels ...string) *Ladder {
	l, err := NewLadder(name, levels...)
	if err != nil {
		panic(err)
	}
	return l
}

// Name returns the ladder's name.
func (l *Ladder) Name() string { return l.name }

// Levels returns the level names, lowest first.
func (l *Ladder) Levels() []string { return append([]string(nil), l.levels...) }

// Lowest returns the lowest level, which an agent whose assignment expired
// falls to.
func (l *Ladder) Lowest() Level { return 0 }

// Highest returns the highest level.
func (l *Ladder) Highest() Level { return Level(len(l.levels) - 1) }

// Parse returns the level named name. An unknown name is an error wrapping
// ErrUnknownLevel that lists the ladder's levels.
func (l *Ladder) Parse(name string) (Level, error) {
	lv, err := l.parse(name)
	if err != nil {
		return 0, fmt.Errorf("trust: %w", err)
	}
	return lv, nil
}

// parse is Parse for errors that callers in this package wrap themselves.
func (l *Ladder) parse(name string) (Level, error) {
	if lv, ok := l.index[name]; ok {
		return lv, nil
	}
	return 0, fmt.Errorf("%w %q on ladder %q (levels: %s)",
		ErrUnknownLevel, name, l.name, strings.Join(l.levels, " < "))
}

// LevelName returns the name of lv, or "" if lv is not on the ladder.
func (l *Ladder) LevelName(lv Level) string {
	if lv < 0 || int(lv) >= len(l.levels) {
		return ""
	}
	return l.levels[lv]
}

// String returns the ladder as "name: a < b < c".
func (l *Ladder) String() string {
	return l.name + ": " + strings.Join(l.levels, " < ")
}

// checkName reports whether s is a valid ladder or level name.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%s %.20q… is longer than %d bytes", what, s, maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%s %q has character %q; use letters, digits, '-', '_' and '.'", what, s, c)
		}
	}
	return nil
}
