package agentsec

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// A Request describes one tool call: who calls, in which budget session,
// which tool, and in which trust scope.
type Request struct {
	// Agent is the calling agent's id, as established by the caller's
	// authentication — never a value the agent chose.
	Agent string
	// Session is the budget session the call is charged to. Budgets are
	// kept per session, so whoever picks session ids picks budgets: the
	// gateway uses the MCP session it created, never one the agent names.
	Session string
	// Tool is the tool's name.
	Tool string
	// Scope selects a scoped trust assignment; empty means none. Like
	// Agent, it must come from the caller's own configuration or
	// authentication, never from the agent: a scoped assignment can be
	// higher than the agent's unscoped one.
	Scope string
	// Attrs are copied into the call's audit record: at most 64, of 16 KiB
	// in all.
	Attrs map[string]string
}

// A TrustGate is the Stack's trust gate: it checks requests against the
// policy and records every change of an agent's level in the audit log
// before it takes effect.
type TrustGate struct {
	// current is the gate in force and the configuration it came from;
	// Stack.Reload replaces it whole, so a check sees one or the other.
	current atomic.Pointer[gateConfig]
	log     *audit.Log
	// mu keeps the log's order of changes the order they apply in, and
	// guards replay and the replacing of current.
	mu sync.Mutex
	// replay is what the gate remembers of the changes it made and read
	// from the log (trustchange.go).
	replay replayState
}

// A gateConfig is a trust gate built from one configuration.
type gateConfig struct {
	gate    *trust.Gate
	version string // Config.Version
}

// live returns the gate in force.
func (g *TrustGate) live() *gateConfig { return g.current.Load() }

// newGate builds the gate tc describes.
func newGate(tc TrustGateConfig) (*trust.Gate, error) {
	ladder := tc.Ladder
	if ladder == nil {
		ladder = trust.DefaultLadder()
	}
	rules := tc.Rules
	switch {
	case tc.ToolName != "" && tc.RequiredLevel != "":
		rules = append([]trust.Rule{{Tool: tc.ToolName, Level: tc.RequiredLevel}}, rules...)
	case tc.ToolName != "":
		return nil, fmt.Errorf("agentsec: config: TrustGate.ToolName %q has no RequiredLevel", tc.ToolName)
	case tc.RequiredLevel != "":
		return nil, fmt.Errorf("agentsec: config: TrustGate.RequiredLevel %q has no ToolName", tc.RequiredLevel)
	}
	policy, err := trust.NewPolicy(ladder, rules, tc.DefaultLevel)
	if err != nil {
		return nil, fmt.Errorf("agentsec: config: %w", err)
	}
	gate, err := trust.NewGate(policy, tc.Agents...)
	if err != nil {
		return nil, fmt.Errorf("agentsec: config: %w", err)
	}
	return gate, nil
}

// Check decides whether req.Agent may call req.Tool in req.Scope. It does
// no I/O and records nothing; Stack.Guard records the decisions it acts
// on.
func (g *TrustGate) Check(req Request) trust.Decision {
	return g.live().gate.Check(trust.Request{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool})
}

// CheckAt is Check as of now, for assignments with an expiry.
func (g *TrustGate) CheckAt(req Request, now time.Time) trust.Decision {
	return g.live().gate.CheckAt(trust.Request{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool}, now)
}

// Assign is AssignBy with no operator or reason: the change of a program
// using the library.
func (g *TrustGate) Assign(ctx context.Context, a trust.Assignment) error {
	_, err := g.AssignBy(ctx, a, Change{})
	return err
}

// Revoke is RevokeBy with no operator or reason.
func (g *TrustGate) Revoke(ctx context.Context, agent, scope string) error {
	_, err := g.RevokeBy(ctx, agent, scope, Change{})
	return err
}

// Validate reports whether a could be assigned now, without recording or
// assigning it.
func (g *TrustGate) Validate(a trust.Assignment) error { return g.live().gate.Validate(a) }

// Assignments returns the assignments in force.
func (g *TrustGate) Assignments() []trust.Assignment { return g.live().gate.Assignments() }

// Policy returns the policy the gate enforces.
func (g *TrustGate) Policy() *trust.Policy { return g.live().gate.Policy() }

// Ladder returns the ladder the gate's levels are on.
func (g *TrustGate) Ladder() *trust.Ladder { return g.live().gate.Ladder() }

// Version returns the Version of the configuration in force.
func (g *TrustGate) Version() string { return g.live().version }
