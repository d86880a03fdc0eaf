package trust

import (
	"cmp"
	"fmt"
	"slices"
)

// A Rule names the level a tool requires. Tool is an exact tool name or a
// glob pattern ('*', '?', '[…]', '\' escapes; '*' also matches '/').
type Rule struct {
	Tool  string
	Level string
}

// A Policy maps tools to the level they require. It is immutable and safe
// for concurrent use.
//
// The rule for a tool is chosen as follows: a rule naming the tool exactly
// wins; otherwise, of the patterns that match, the one requiring the
// highest level wins (so overlapping patterns never weaken each other);
// otherwise the policy's default level applies, if it has one; otherwise
// the tool has no rule and every call to it is denied.
type Policy struct {
	ladder     *Ladder
	exact      map[string]Level
	patterns   []patternRule // highest level first
	hasDefault bool
	def        Level
}

type patternRule struct {
	glob  *glob
	level Level
}

// NewPolicy returns a policy over ladder. defaultLevel is the level
// required by tools no rule matches; leave it empty to deny such tools.
// It is an error for a rule to name an unknown level, to have an empty or
// malformed tool pattern, or for two rules to name the same tool or
// pattern.
func NewPolicy(ladder *Ladder, rules []Rule, defaultLevel string) (*Policy, error) {
	if ladder == nil {
		return nil, fmt.Errorf("trust: policy needs a ladder")
	}
	p := &Policy{ladder: ladder, exact: make(map[string]Level, len(rules))}
	seen := make(map[string]bool, len(rules))
	for i, r := range rules {
		if err := checkTool(r.Tool); err != nil {
			return nil, fmt.Errorf("trust: rule %d: %w", i+1, err)
		}
		if seen[r.Tool] {
			return nil, fmt.Errorf("trust: rule %d: tool %q already has a rule", i+1, r.Tool)
		}
		seen[r.Tool] = true
		lv, err := ladder.parse(r.Level)
		if err != nil {
			return nil, fmt.Errorf("trust: rule %d for tool %q: %w", i+1, r.Tool, err)
		}
		if !isPattern(r.Tool) {
			p.exact[r.Tool] = lv
			continue
		}
		g, err := compileGlob(r.Tool)
		if err != nil {
			return nil, fmt.Errorf("trust: rule %d: %w", i+1, err)
		}
		p.patterns = append(p.patterns, patternRule{glob: g, level: lv})
	}
	slices.SortStableFunc(p.patterns, func(a, b patternRule) int { return cmp.Compare(b.level, a.level) })
	if defaultLevel != "" {
		lv, err := ladder.parse(defaultLevel)
		if err != nil {
			return nil, fmt.Errorf("trust: default level: %w", err)
		}
		p.hasDefault, p.def = true, lv
	}
	return p, nil
}

// Ladder returns the ladder the policy's levels are on.
func (p *Policy) Ladder() *Ladder { return p.ladder }

// Required returns the level tool requires, and false if no rule or
// default covers it.
func (p *Policy) Required(tool string) (Level, bool) {
	if lv, ok := p.exact[tool]; ok {
		return lv, true
	}
	for i := range p.patterns {
		if p.patterns[i].glob.match(tool) {
			return p.patterns[i].level, true
		}
	}
	return p.def, p.hasDefault
}

// DefaultLevel returns the name of the level tools no rule covers
// require, or "" if the policy denies them.
func (p *Policy) DefaultLevel() string {
	if !p.hasDefault {
		return ""
	}
	return p.ladder.LevelName(p.def)
}

// Rules returns the policy's rules: exact names first, sorted, then
// patterns, strictest first.
func (p *Policy) Rules() []Rule {
	rules := make([]Rule, 0, len(p.exact)+len(p.patterns))
	for tool, lv := range p.exact {
		rules = append(rules, Rule{Tool: tool, Level: p.ladder.LevelName(lv)})
	}
	slices.SortFunc(rules, func(a, b Rule) int { return cmp.Compare(a.Tool, b.Tool) })
	for _, pr := range p.patterns {
		rules = append(rules, Rule{Tool: pr.glob.source, Level: p.ladder.LevelName(pr.level)})
	}
	return rules
}

// checkTool reports whether s can be a tool name or pattern.
func checkTool(s string) error {
	if s == "" {
		return fmt.Errorf("empty tool name")
	}
	return checkID("tool name", s)
}
