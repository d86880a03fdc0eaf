package agentsec

import (
	"context"
	"sync"
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
	gate *trust.Gate
	log  *audit.Log
	mu   sync.Mutex // keeps the log's order of changes the order they apply in; guards replay
	// replay is what the gate remembers of the changes it made and read
	// from the log (trustchange.go).
	replay replayState
}

// Check decides whether req.Agent may call req.Tool in req.Scope. It does
// no I/O and records nothing; Stack.Guard records the decisions it acts
// on.
func (g *TrustGate) Check(req Request) trust.Decision {
	return g.gate.Check(trust.Request{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool})
}

// CheckAt is Check as of now, for assignments with an expiry.
func (g *TrustGate) CheckAt(req Request, now time.Time) trust.Decision {
	return g.gate.CheckAt(trust.Request{Agent: req.Agent, Scope: req.Scope, Tool: req.Tool}, now)
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
func (g *TrustGate) Validate(a trust.Assignment) error { return g.gate.Validate(a) }

// Assignments returns the assignments in force.
func (g *TrustGate) Assignments() []trust.Assignment { return g.gate.Assignments() }

// Policy returns the policy the gate enforces.
func (g *TrustGate) Policy() *trust.Policy { return g.gate.Policy() }

// Ladder returns the ladder the gate's levels are on.
func (g *TrustGate) Ladder() *trust.Ladder { return g.gate.Ladder() }
