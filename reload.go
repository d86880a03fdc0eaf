package agentsec

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// Audit events of a reload.
const (
	// EventConfigReload closes the records of one reload: the changes
	// recorded before it with the same "reload" attribute took effect
	// once it was recorded, and not before. Changes without it never did.
	EventConfigReload = "config.reload"
	// EventTrustRule records a tool rule added, changed or removed: its
	// tool pattern, its required level (none if removed) and "previous".
	EventTrustRule = "trust.rule"
	// EventTrustDefault records a change of the level tools no rule
	// covers require (none: they are denied).
	EventTrustDefault = "trust.default"
	// EventTrustLadder records a change of the ladder: its levels, and
	// the previous ones, in "levels" and "previous".
	EventTrustLadder = "trust.ladder"
)

// A Reload is a new configuration for a running Stack.
type Reload struct {
	// TrustGate replaces the ladder, the rules, the default level and the
	// configuration's assignments. Runtime changes made over an
	// assignment the new configuration keeps stay in force.
	TrustGate TrustGateConfig
	// Version names the new configuration, as Config.Version does.
	Version string
	// Operator names who reloaded — an operator's id — on the reload's
	// records; empty for a signal or a program.
	Operator string
	// Records are further changes the caller makes with the reload —
	// agents' tokens, say — recorded with it, before it takes effect.
	// Their Attrs get the reload's id.
	Records []audit.Record
}

// Reloaded says what a reload changed.
type Reloaded struct {
	// Changes describes each change recorded, one line each; empty if
	// the new configuration changed nothing.
	Changes []string
	// Seq is the index of the "config.reload" record, when Changes is not
	// empty.
	Seq uint64
}

// Reload puts a new trust configuration into force, at once for every
// call decided from then on: a call already past the trust gate goes on
// under the configuration that admitted it, and every call's record names
// the Version that decided it (AttrConfig).
//
// Each change is recorded first — a "trust.rule", "trust.default",
// "trust.ladder", "trust.assign" or "trust.revoke" record (source
// "config"), then r.Records, then one "config.reload" record naming the
// versions before and after — and the new configuration takes effect only
// once all are stored. An invalid configuration is an error and changes
// nothing; so is one whose records can't be written (though the records
// written before the failure stay, with no "config.reload" to close
// them, and no replay counts them: on a signed log the closing record is
// signed, and a reload's assignment changes hold from it on). A reload that changes nothing, not even the Version, records
// nothing.
func (s *Stack) Reload(ctx context.Context, r Reload) (Reloaded, error) {
	gate, err := newGate(r.TrustGate)
	if err != nil {
		return Reloaded{}, err
	}
	g := s.TrustGate
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.live()

	// The runtime changes, replayed over the new configuration, as a
	// start would; only recording can fail after this.
	rs := newReplayState(gate.Assignments(), g.replay.logger)
	if g.log.CanSign() {
		if err := g.syncInto(ctx, gate, &rs); err != nil {
			return Reloaded{}, err
		}
	}

	changes := trustDiff(old.gate, &g.replay, gate, &rs, r.TrustGate.Agents)
	if len(changes) == 0 && len(r.Records) == 0 && r.Version == old.version {
		g.replay = rs
		g.current.Store(&gateConfig{gate: gate, version: r.Version})
		return Reloaded{}, nil
	}
	var id [8]byte
	rand.Read(id[:])
	reload := hex.EncodeToString(id[:])
	var out Reloaded
	for _, c := range changes {
		c.rec.Attrs[attrSource], c.rec.Attrs[attrReload] = sourceConfig, reload
		if r.Operator != "" {
			c.rec.Attrs[attrOperator] = r.Operator
		}
		if c.rec.Event == EventTrustAssign || c.rec.Event == EventTrustRevoke {
			// Sealed, it ends the runtime changes made over the old line.
			if err := g.seal(&c.rec, rs.config(assignKey{c.rec.Agent, c.rec.Scope})); err != nil {
				return Reloaded{}, fmt.Errorf("agentsec: reload not applied: %w", err)
			}
		}
		logged, err := g.log.Log(ctx, c.rec)
		if err != nil {
			return Reloaded{}, fmt.Errorf("agentsec: reload not applied: %w", err)
		}
		if id := c.rec.Attrs[attrChangeID]; id != "" {
			k := assignKey{c.rec.Agent, c.rec.Scope}
			rs.seen[id], rs.last[k] = true, logged.Seq
			delete(rs.inForce, k)
		}
		out.Changes = append(out.Changes, c.text)
	}
	for _, rec := range r.Records {
		rec.Attrs = maps.Clone(rec.Attrs)
		if rec.Attrs == nil {
			rec.Attrs = map[string]string{}
		}
		rec.Attrs[attrReload] = reload
		if _, err := g.log.Log(ctx, rec); err != nil {
			return Reloaded{}, fmt.Errorf("agentsec: reload not applied: %w", err)
		}
		out.Changes = append(out.Changes, cmp.Or(rec.Reason, rec.Event))
	}
	closing := audit.Record{Event: EventConfigReload, Reason: "configuration reloaded",
		Attrs: map[string]string{attrReload: reload, "changes": strconv.Itoa(len(out.Changes))}}
	if r.Version != "" {
		closing.Attrs[AttrConfig] = r.Version
	}
	if old.version != "" {
		closing.Attrs[attrPrevious] = old.version
	}
	if r.Operator != "" {
		closing.Attrs[attrOperator] = r.Operator
	}
	if g.log.CanSign() {
		// Signed, it puts the reload's changes into force on replay: a
		// reload refused partway leaves changes no replica counts.
		closing.Namespace = g.log.Namespace()
		sig, err := g.log.SignStatement(reloadKind, reloadStatement(closing.Namespace, reload))
		if err != nil {
			return Reloaded{}, fmt.Errorf("agentsec: reload not applied: %w", err)
		}
		closing.Attrs[attrSignature] = base64.StdEncoding.EncodeToString(sig)
	}
	logged, err := g.log.Log(ctx, closing)
	if err != nil {
		return Reloaded{}, fmt.Errorf("agentsec: reload not applied: %w", err)
	}
	out.Seq = logged.Seq
	g.replay = rs
	g.current.Store(&gateConfig{gate: gate, version: r.Version})
	return out, nil
}

// attrReload names, on a reload's records, the reload they belong to.
const attrReload = "reload"

// reloadKind is the kind of statement a reload's closing signature is.
const reloadKind = "config-reload/v1"

// reloadStatement returns the bytes a reload's closing record signs: the
// log's namespace and the reload's id.
func reloadStatement(namespace, reload string) []byte {
	data, err := json.Marshal(struct {
		Namespace string `json:"namespace"`
		Reload    string `json:"reload"`
	}{namespace, reload})
	if err != nil {
		panic(err) // strings only: it can't fail
	}
	return data
}

// A trustChange is one difference between two configurations: its record
// (Attrs made, not yet with source or reload) and a line for people.
type trustChange struct {
	rec  audit.Record
	text string
}

// trustDiff lists what changes from the old gate and its configuration's
// assignments to the new: the ladder, the default level, the rules, then
// the assignments, each in a stable order.
func trustDiff(oldGate *trust.Gate, oldRS *replayState, newGate *trust.Gate, newRS *replayState, newAgents []trust.Assignment) []trustChange {
	var out []trustChange
	add := func(rec audit.Record, text string) {
		if rec.Attrs == nil {
			rec.Attrs = map[string]string{}
		}
		out = append(out, trustChange{rec, text})
	}
	if o, n := oldGate.Ladder().String(), newGate.Ladder().String(); o != n {
		add(audit.Record{Event: EventTrustLadder, Attrs: map[string]string{"levels": n, attrPrevious: o}},
			fmt.Sprintf("ladder %s (was %s)", n, o))
	}
	if o, n := oldGate.Policy().DefaultLevel(), newGate.Policy().DefaultLevel(); o != n {
		rec := audit.Record{Event: EventTrustDefault, RequiredLevel: n, Attrs: map[string]string{}}
		if o != "" {
			rec.Attrs[attrPrevious] = o
		}
		add(rec, fmt.Sprintf("default level %s (was %s)", cmp.Or(n, "(none: denied)"), cmp.Or(o, "(none: denied)")))
	}
	oldRules, newRules := ruleLevels(oldGate.Policy()), ruleLevels(newGate.Policy())
	for _, tool := range slices.Sorted(maps.Keys(union(oldRules, newRules))) {
		o, hadOld := oldRules[tool]
		n, hasNew := newRules[tool]
		if hadOld && hasNew && o == n {
			continue
		}
		rec := audit.Record{Event: EventTrustRule, Tool: tool, RequiredLevel: n, Attrs: map[string]string{}}
		if hadOld {
			rec.Attrs[attrPrevious] = o
		}
		switch {
		case !hadOld:
			add(rec, fmt.Sprintf("rule %q: %s (new)", tool, n))
		case !hasNew:
			add(rec, fmt.Sprintf("rule %q removed (was %s)", tool, o))
		default:
			add(rec, fmt.Sprintf("rule %q: %s (was %s)", tool, n, o))
		}
	}
	newAssigned := map[assignKey]trust.Assignment{}
	for _, a := range newAgents {
		newAssigned[assignKey{a.Agent, a.Scope}] = a
	}
	keys := slices.SortedFunc(maps.Keys(union(oldRS.configured, newRS.configured)), func(a, b assignKey) int {
		return cmp.Or(cmp.Compare(a.agent, b.agent), cmp.Compare(a.scope, b.scope))
	})
	for _, k := range keys {
		_, hadOld := oldRS.configured[k]
		_, hasNew := newRS.configured[k]
		o, n := oldRS.config(k), newRS.config(k)
		if hadOld && hasNew && o == n {
			continue
		}
		who := fmt.Sprintf("agent %q", k.agent)
		if k.scope != "" {
			who += fmt.Sprintf(" in scope %q", k.scope)
		}
		if !hasNew {
			add(audit.Record{Event: EventTrustRevoke, Agent: k.agent, Scope: k.scope,
				Attrs: map[string]string{attrPrevious: o}}, fmt.Sprintf("%s: no level (was %s)", who, o))
			continue
		}
		rec := assignmentRecord(newAssigned[k], sourceConfig)
		if hadOld {
			rec.Attrs[attrPrevious] = o
			add(rec, fmt.Sprintf("%s: %s (was %s)", who, n, o))
		} else {
			add(rec, fmt.Sprintf("%s: %s (new)", who, n))
		}
	}
	return out
}

// ruleLevels maps each rule's tool pattern to its level's name.
func ruleLevels(p *trust.Policy) map[string]string {
	out := map[string]string{}
	for _, r := range p.Rules() {
		out[r.Tool] = r.Level
	}
	return out
}

// union returns a set of the keys of a and b.
func union[K comparable, V any](a, b map[K]V) map[K]struct{} {
	out := make(map[K]struct{}, len(a)+len(b))
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}
