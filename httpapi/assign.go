package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// Operators change agents' trust levels at run time through the Stack's
// TrustGate, which records each change — with the operator's id and
// reason — before it takes effect, and keeps it in the log, so that it
// holds on every replica and after a restart.

// assignmentJSON is an assignment as the API shows it.
type assignmentJSON struct {
	Agent   string     `json:"agent"`
	Scope   string     `json:"scope"`
	Level   string     `json:"level"`
	Expires *time.Time `json:"expires,omitempty"`
	// Expired says the assignment's expiry has passed: the agent holds
	// the ladder's lowest level under it.
	Expired bool `json:"expired,omitempty"`
}

func assignmentOf(a trust.Assignment, now time.Time) assignmentJSON {
	out := assignmentJSON{Agent: a.Agent, Scope: a.Scope, Level: a.Level}
	if !a.Expires.IsZero() {
		exp := a.Expires.UTC()
		out.Expires, out.Expired = &exp, !now.Before(a.Expires)
	}
	return out
}

type assignmentsAnswer struct {
	Ladder      []string         `json:"ladder"`
	Assignments []assignmentJSON `json:"assignments"`
}

// listAssignments answers the assignments in force: an operator's, every
// agent's, or those of the agent ?agent= names; an agent's, its own.
func (s *Server) listAssignments(_ context.Context, q *request) answer {
	named := q.r.URL.Query().Get("agent")
	if q.who.agent != "" || named != "" {
		agent, a, ok := q.who.actingAgent(named)
		if !ok {
			return a
		}
		named = agent
	}
	now := time.Now()
	out := assignmentsAnswer{Ladder: s.Stack.TrustGate.Ladder().Levels(), Assignments: []assignmentJSON{}}
	for _, a := range s.Stack.TrustGate.Assignments() {
		if named == "" || a.Agent == named {
			out.Assignments = append(out.Assignments, assignmentOf(a, now))
		}
	}
	return reply(http.StatusOK, out)
}

type assignRequest struct {
	Agent   string     `json:"agent"`
	Scope   string     `json:"scope"`
	Level   string     `json:"level"`
	Expires *time.Time `json:"expires"`
	Reason  string     `json:"reason"`
}

type changeAnswer struct {
	DecisionID uint64     `json:"decision_id"`
	Record     recordJSON `json:"record"`
}

// assign puts an operator's assignment into force.
func (s *Server) assign(ctx context.Context, q *request) answer {
	var in assignRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	if a, ok := checkChange(in.Agent, in.Reason); !ok {
		return a
	}
	if in.Level == "" {
		return invalid("\"level\" is required: one of " + strings.Join(s.Stack.TrustGate.Ladder().Levels(), ", "))
	}
	a := trust.Assignment{Agent: in.Agent, Scope: in.Scope, Level: in.Level}
	if in.Expires != nil {
		a.Expires = *in.Expires
	}
	rec, err := s.Stack.TrustGate.AssignBy(ctx, a, agentsec.Change{Operator: q.who.operator, Reason: in.Reason})
	return s.changed(rec, err)
}

type revokeRequest struct {
	Agent  string `json:"agent"`
	Scope  string `json:"scope"`
	Reason string `json:"reason"`
}

// revoke removes an agent's assignment in a scope.
func (s *Server) revoke(ctx context.Context, q *request) answer {
	var in revokeRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	if a, ok := checkChange(in.Agent, in.Reason); !ok {
		return a
	}
	rec, err := s.Stack.TrustGate.RevokeBy(ctx, in.Agent, in.Scope, agentsec.Change{Operator: q.who.operator, Reason: in.Reason})
	return s.changed(rec, err)
}

// checkChange checks what every change names: the agent, and why.
func checkChange(agent, reason string) (answer, bool) {
	switch {
	case agent == "":
		return invalid("\"agent\" is required"), false
	case strings.TrimSpace(reason) == "":
		return invalid("\"reason\" is required: say why, for the audit log"), false
	}
	return answer{}, true
}

// changed answers a change made, or refused.
func (s *Server) changed(rec audit.Record, err error) answer {
	switch {
	case errors.Is(err, agentsec.ErrNoAssignment):
		return notFound(strings.TrimPrefix(err.Error(), "agentsec: "))
	case errors.Is(err, agentsec.ErrAuditUnavailable):
		return auditUnavailableBecause("the change could not be recorded, so it was not made", err)
	case err != nil: // refused before it was recorded: an unknown level, a reason too long…
		return invalid(strings.TrimPrefix(strings.TrimPrefix(err.Error(), "agentsec: "), "trust: "))
	}
	return reply(http.StatusOK, changeAnswer{DecisionID: rec.Seq, Record: recordOf(&rec)})
}
