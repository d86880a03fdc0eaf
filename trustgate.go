package agentsec

import (
	"context"
	"fmt"
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
	mu   sync.Mutex // keeps the log's order of changes the order they apply in
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

// Assign records a in the audit log as a "trust.assign" event and then
// puts it into force. An invalid assignment is an error and is neither
// recorded nor applied; if the record cannot be written, the assignment
// is not applied either.
//
// The record names the level the agent held before in the "previous"
// attribute, if it held one in that scope.
func (g *TrustGate) Assign(ctx context.Context, a trust.Assignment) error {
	now := time.Now()
	if err := g.gate.ValidateAt(a, now); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	rec := assignmentRecord(a, "api")
	if old, ok := g.gate.Assignment(a.Agent, a.Scope); ok {
		rec.Attrs["previous"] = old.Level
	}
	if _, err := g.log.Log(ctx, rec); err != nil {
		return fmt.Errorf("agentsec: assignment not applied: %w", err)
	}
	return g.gate.AssignAt(a, now)
}

// Revoke records the removal of agent's assignment in scope as a
// "trust.revoke" event and then removes it. Revoking an assignment that
// does not exist is an error and is not recorded.
func (g *TrustGate) Revoke(ctx context.Context, agent, scope string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.gate.Assignment(agent, scope); !ok {
		return fmt.Errorf("agentsec: agent %q has no assignment in scope %q to revoke", agent, scope)
	}
	rec := audit.Record{Event: EventTrustRevoke, Agent: agent, Scope: scope,
		Attrs: map[string]string{"source": "api"}}
	if _, err := g.log.Log(ctx, rec); err != nil {
		return fmt.Errorf("agentsec: revocation not applied: %w", err)
	}
	g.gate.Revoke(agent, scope)
	return nil
}

// Assignments returns the assignments in force.
func (g *TrustGate) Assignments() []trust.Assignment { return g.gate.Assignments() }

// Policy returns the policy the gate enforces.
func (g *TrustGate) Policy() *trust.Policy { return g.gate.Policy() }

// Ladder returns the ladder the gate's levels are on.
func (g *TrustGate) Ladder() *trust.Ladder { return g.gate.Ladder() }
