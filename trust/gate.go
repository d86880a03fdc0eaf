package trust

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// An Assignment is an operator's statement that Agent holds Level, in
// Scope if Scope is not empty, until Expires if Expires is not zero.
//
// A scoped assignment applies to requests in that scope; an unscoped one
// applies to every scope the agent has no scoped assignment for. After
// Expires the agent holds the ladder's lowest level under that assignment,
// never a higher one.
type Assignment struct {
	Agent   string
	Scope   string
	Level   string
	Expires time.Time
}

// A Request asks whether Agent may call Tool in Scope.
type Request struct {
	Agent string
	Scope string
	Tool  string
}

// Reason says why a Decision came out as it did.
type Reason uint8

// The reasons a Decision can give.
const (
	ReasonAllowed      Reason = iota // the assigned level meets the required level
	ReasonInsufficient               // the assigned level is below the required level
	ReasonExpired                    // the assignment expired and the lowest level is below the required level
	ReasonUnassigned                 // no operator assigned the agent a level
	ReasonNoRule                     // no rule or default covers the tool
)

var reasonText = [...]string{
	ReasonAllowed:      "assigned level meets the required level",
	ReasonInsufficient: "assigned level is below the required level",
	ReasonExpired:      "assignment expired and the lowest level is below the required level",
	ReasonUnassigned:   "agent has no assigned trust level",
	ReasonNoRule:       "no trust rule covers the tool",
}

// String returns a short lowercase explanation.
func (r Reason) String() string {
	if int(r) < len(reasonText) {
		return reasonText[r]
	}
	return fmt.Sprintf("trust.Reason(%d)", r)
}

// A Decision is the outcome of Gate.Check.
type Decision struct {
	Allowed bool
	Reason  Reason
	Agent   string
	Scope   string
	Tool    string
	// Required is the level the tool requires; meaningless unless
	// HasRule.
	Required Level
	// Assigned is the level the agent holds for this request; meaningless
	// unless HasAssignment.
	Assigned Level
	// HasRule is true when a rule or the policy's default covers the tool.
	HasRule bool
	// HasAssignment is true when the agent has an assignment for the
	// request, expired or not.
	HasAssignment bool
	// Expired is true when the agent's assignment had expired, so Assigned
	// is the ladder's lowest level.
	Expired bool
	ladder  *Ladder
}

// RequiredName returns the name of the required level, or "" if no rule
// covers the tool.
func (d Decision) RequiredName() string {
	if d.ladder == nil || !d.HasRule {
		return ""
	}
	return d.ladder.LevelName(d.Required)
}

// AssignedName returns the name of the agent's level, or "" if the agent
// has none.
func (d Decision) AssignedName() string {
	if d.ladder == nil || !d.HasAssignment {
		return ""
	}
	return d.ladder.LevelName(d.Assigned)
}

// String describes the decision in one line.
func (d Decision) String() string {
	verdict := "denied"
	if d.Allowed {
		verdict = "allowed"
	}
	s := fmt.Sprintf("%s: agent %q tool %q: %s", verdict, d.Agent, d.Tool, d.Reason)
	switch d.Reason {
	case ReasonAllowed, ReasonInsufficient, ReasonExpired:
		s += fmt.Sprintf(" (assigned %s, required %s)", d.AssignedName(), d.RequiredName())
	}
	return s
}

// A Gate checks requests against a Policy and the operator's assignments.
// Check is safe to call concurrently with itself and with Assign and
// Revoke; it takes no lock and does not allocate.
type Gate struct {
	policy *Policy
	mu     sync.Mutex // serializes writers of grants
	grants atomic.Pointer[grantMap]
}

// grantKey names the grant of an agent in a scope ("" for unscoped).
type grantKey struct{ agent, scope string }

type grant struct {
	level   Level
	expires time.Time
}

// A grantMap holds grants by agent, then by scope. Agent and scope are
// separate keys, so ("a:b", "c") and ("a", "b:c") can never name the same
// grant, and the common unscoped lookup is one string-keyed map access.
// A published grantMap is never modified: writers build a changed copy.
type grantMap map[string]agentGrants

type agentGrants struct {
	base    grant
	hasBase bool
	scoped  map[string]grant
}

func (m grantMap) get(k grantKey) (grant, bool) {
	ag := m[k.agent]
	if k.scope == "" {
		return ag.base, ag.hasBase
	}
	gr, ok := ag.scoped[k.scope]
	return gr, ok
}

// with returns a copy of m in which k holds gr.
func (m grantMap) with(k grantKey, gr grant) grantMap {
	out := maps.Clone(m)
	if out == nil {
		out = grantMap{}
	}
	ag := out[k.agent]
	if k.scope == "" {
		ag.base, ag.hasBase = gr, true
	} else {
		ag.scoped = maps.Clone(ag.scoped)
		if ag.scoped == nil {
			ag.scoped = map[string]grant{}
		}
		ag.scoped[k.scope] = gr
	}
	out[k.agent] = ag
	return out
}

// without returns a copy of m without k, and whether m had k.
func (m grantMap) without(k grantKey) (grantMap, bool) {
	if _, ok := m.get(k); !ok {
		return m, false
	}
	out := maps.Clone(m)
	ag := out[k.agent]
	if k.scope == "" {
		ag.base, ag.hasBase = grant{}, false
	} else {
		ag.scoped = maps.Clone(ag.scoped)
		delete(ag.scoped, k.scope)
	}
	if !ag.hasBase && len(ag.scoped) == 0 {
		delete(out, k.agent)
	} else {
		out[k.agent] = ag
	}
	return out, true
}

// all calls fn for every grant.
func (m grantMap) all(fn func(grantKey, grant)) {
	for agent, ag := range m {
		if ag.hasBase {
			fn(grantKey{agent, ""}, ag.base)
		}
		for scope, gr := range ag.scoped {
			fn(grantKey{agent, scope}, gr)
		}
	}
}

// NewGate returns a gate enforcing policy, with the given assignments in
// force. It returns an error if any assignment is invalid (see Assign).
func NewGate(policy *Policy, assignments ...Assignment) (*Gate, error) {
	if policy == nil {
		return nil, fmt.Errorf("trust: gate needs a policy")
	}
	g := &Gate{policy: policy}
	m := grantMap{}
	now := time.Now()
	for _, a := range assignments {
		k, gr, err := g.resolve(a, now)
		if err != nil {
			return nil, err
		}
		if _, dup := m.get(k); dup {
			return nil, fmt.Errorf("trust: agent %q is assigned twice in scope %q", a.Agent, a.Scope)
		}
		m = m.with(k, gr)
	}
	g.grants.Store(&m)
	return g, nil
}

// Policy returns the gate's policy.
func (g *Gate) Policy() *Policy { return g.policy }

// Ladder returns the ladder of the gate's policy.
func (g *Gate) Ladder() *Ladder { return g.policy.ladder }

// Check decides req at the current time.
func (g *Gate) Check(req Request) Decision { return g.check(req, time.Time{}) }

// CheckAt decides req as of now, which only matters for assignments with
// an expiry. A zero now means the current time, as in Check, so a time
// left unset by mistake can never make an expired assignment look valid.
func (g *Gate) CheckAt(req Request, now time.Time) Decision {
	return g.check(req, now)
}

// check decides req; a zero now means read the clock, which is only done
// when an expiry must be compared.
func (g *Gate) check(req Request, now time.Time) Decision {
	d := Decision{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool, ladder: g.policy.ladder}
	d.Required, d.HasRule = g.policy.Required(req.Tool)
	gr, ok := g.lookup(req.Agent, req.Scope)
	if !ok {
		d.Reason = ReasonUnassigned
		return d
	}
	d.Assigned, d.HasAssignment = gr.level, true
	if !gr.expires.IsZero() {
		if now.IsZero() {
			now = time.Now()
		}
		if !now.Before(gr.expires) {
			d.Assigned, d.Expired = g.policy.ladder.Lowest(), true
		}
	}
	switch {
	case !d.HasRule:
		d.Reason = ReasonNoRule
	case d.Assigned >= d.Required:
		d.Allowed, d.Reason = true, ReasonAllowed
	case d.Expired:
		d.Reason = ReasonExpired
	default:
		d.Reason = ReasonInsufficient
	}
	return d
}

func (g *Gate) lookup(agent, scope string) (grant, bool) {
	ag, ok := (*g.grants.Load())[agent]
	if !ok {
		return grant{}, false
	}
	if scope != "" {
		if gr, ok := ag.scoped[scope]; ok {
			return gr, true
		}
	}
	return ag.base, ag.hasBase
}

// Validate reports whether a could be assigned now, without assigning it.
func (g *Gate) Validate(a Assignment) error { return g.ValidateAt(a, time.Now()) }

// ValidateAt reports whether a could be assigned at now.
func (g *Gate) ValidateAt(a Assignment, now time.Time) error {
	_, _, err := g.resolve(a, now)
	return err
}

// Assign puts a into force, replacing any assignment for the same agent and
// scope. It is an error for the agent to be empty, for the agent or scope
// to be longer than 256 bytes, invalid UTF-8 or to contain control
// characters, for the level to be unknown, or for Expires to have passed.
func (g *Gate) Assign(a Assignment) error { return g.AssignAt(a, time.Now()) }

// AssignAt is Assign as of now: Expires must be after now.
func (g *Gate) AssignAt(a Assignment, now time.Time) error {
	k, gr, err := g.resolve(a, now)
	if err != nil {
		return err
	}
	g.update(func(m grantMap) grantMap { return m.with(k, gr) })
	return nil
}

// Revoke removes the assignment for agent in scope and reports whether
// there was one. An agent with no assignment left is denied every call.
func (g *Gate) Revoke(agent, scope string) bool {
	found := false
	g.update(func(m grantMap) grantMap {
		m, found = m.without(grantKey{agent, scope})
		return m
	})
	return found
}

// update replaces the grant map with change's copy of it, so readers never
// see a map being written.
func (g *Gate) update(change func(grantMap) grantMap) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := change(*g.grants.Load())
	g.grants.Store(&m)
}

// Assignment returns the assignment for agent in exactly scope, if there
// is one; it does not fall back to the agent's unscoped assignment.
func (g *Gate) Assignment(agent, scope string) (Assignment, bool) {
	gr, ok := (*g.grants.Load()).get(grantKey{agent, scope})
	if !ok {
		return Assignment{}, false
	}
	return Assignment{Agent: agent, Scope: scope, Level: g.policy.ladder.LevelName(gr.level), Expires: gr.expires}, true
}

// Assignments returns the assignments in force, sorted by agent then scope.
// Expired assignments are included with their expiry.
func (g *Gate) Assignments() []Assignment {
	out := []Assignment{}
	(*g.grants.Load()).all(func(k grantKey, gr grant) {
		out = append(out, Assignment{Agent: k.agent, Scope: k.scope,
			Level: g.policy.ladder.LevelName(gr.level), Expires: gr.expires})
	})
	slices.SortFunc(out, func(a, b Assignment) int {
		return cmp.Or(cmp.Compare(a.Agent, b.Agent), cmp.Compare(a.Scope, b.Scope))
	})
	return out
}

func (g *Gate) resolve(a Assignment, now time.Time) (grantKey, grant, error) {
	if a.Agent == "" {
		return grantKey{}, grant{}, fmt.Errorf("trust: assignment has an empty agent id")
	}
	if err := checkID("agent id", a.Agent); err != nil {
		return grantKey{}, grant{}, fmt.Errorf("trust: %w", err)
	}
	if err := checkID("scope", a.Scope); err != nil {
		return grantKey{}, grant{}, fmt.Errorf("trust: %w", err)
	}
	lv, err := g.policy.ladder.parse(a.Level)
	if err != nil {
		return grantKey{}, grant{}, fmt.Errorf("trust: assignment for agent %q: %w", a.Agent, err)
	}
	if !a.Expires.IsZero() && !now.Before(a.Expires) {
		return grantKey{}, grant{}, fmt.Errorf("trust: assignment for agent %q expires at %s, which has passed",
			a.Agent, a.Expires.UTC().Format(time.RFC3339))
	}
	return grantKey{a.Agent, a.Scope}, grant{level: lv, expires: a.Expires}, nil
}

// checkID reports whether s is a usable agent id, scope or tool name: at
// most 256 bytes of valid UTF-8 without control characters.
func checkID(what, s string) error {
	if len(s) > maxNameLen {
		return fmt.Errorf("%s %.20q… is longer than %d bytes", what, s, maxNameLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) { // C0, DEL and C1, such as the CSI U+009B
			return fmt.Errorf("%s %q has control character %U", what, s, r)
		}
	}
	return nil
}
