package httpapi

import (
	"context"
	"net/http"
	"slices"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/trust"
)

// actingScope returns the trust scope a request acts in. An agent's token
// may use the scopes of the assignments it was configured on, and no
// other: an agent's scoped level can be higher than its unscoped one, so
// the agent can't be the one to pick it. An operator asking about an
// agent may name any scope.
func (p principal) actingScope(named *string) (string, answer, bool) {
	if p.agent == "" {
		if named == nil {
			return "", answer{}, true
		}
		return *named, answer{}, true
	}
	if named != nil {
		if !slices.Contains(p.scopes, *named) {
			return "", forbidden("this token may not act in scope " + quote(*named)), false
		}
		return *named, answer{}, true
	}
	switch {
	case slices.Contains(p.scopes, ""):
		return "", answer{}, true
	case len(p.scopes) == 1:
		return p.scopes[0], answer{}, true
	}
	return "", invalid("this token acts in several scopes: name one in \"scope\""), false
}

// actingAgent returns the agent a request is about: the caller, if an
// agent, who may name only itself; for an operator, the agent it names.
func (p principal) actingAgent(named string) (string, answer, bool) {
	switch {
	case p.agent != "" && named != "" && named != p.agent:
		return "", forbidden("an agent acts only as itself: this token is agent " + quote(p.agent) + "'s"), false
	case p.agent != "":
		return p.agent, answer{}, true
	case named == "":
		return "", invalid("an operator names the agent: \"agent\" is required"), false
	}
	return named, answer{}, true
}

type trustCheckRequest struct {
	Tool  string  `json:"tool"`
	Scope *string `json:"scope"`
	Agent string  `json:"agent"`
}

type trustCheckAnswer struct {
	Allowed       bool   `json:"allowed"`
	Reason        string `json:"reason"`
	Agent         string `json:"agent"`
	Tool          string `json:"tool"`
	Scope         string `json:"scope"`
	RequiredLevel string `json:"required_level"`
	AssignedLevel string `json:"assigned_level"`
}

func (s *Server) checkTrust(_ context.Context, q *request) answer {
	var in trustCheckRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	d, a, ok := s.check(q.who, in.Agent, in.Tool, in.Scope)
	if !ok {
		return a
	}
	return reply(http.StatusOK, trustCheckAnswer{Allowed: d.Allowed, Reason: d.Reason.String(), Agent: d.Agent,
		Tool: d.Tool, Scope: d.Scope, RequiredLevel: d.RequiredName(), AssignedLevel: d.AssignedName()})
}

// check asks the trust gate, for the agent and scope the caller may act
// as. It records nothing: a check is a question.
func (s *Server) check(who principal, agent, tool string, scope *string) (trust.Decision, answer, bool) {
	agent, a, ok := who.actingAgent(agent)
	if !ok {
		return trust.Decision{}, a, false
	}
	sc, a, ok := who.actingScope(scope)
	if !ok {
		return trust.Decision{}, a, false
	}
	if tool == "" {
		return trust.Decision{}, invalid("\"tool\" is required"), false
	}
	return s.Stack.TrustGate.Check(agentsec.Request{Agent: agent, Tool: tool, Scope: sc}), answer{}, true
}

// The evaluation request and answer of OpenID AuthZEN 1.0.
type (
	authzenEntity struct {
		Type string `json:"type"`
		ID   string `json:"id"`
	}
	authzenRequest struct {
		Subject *authzenEntity `json:"subject"`
		Action  struct {
			Name string `json:"name"`
		} `json:"action"`
		Resource authzenEntity `json:"resource"`
		Context  struct {
			Scope *string `json:"scope"`
		} `json:"context"`
	}
	authzenAnswer struct {
		Decision bool `json:"decision"`
		Context  struct {
			Reason        string `json:"reason"`
			RequiredLevel string `json:"required_level"`
			AssignedLevel string `json:"assigned_level"`
		} `json:"context"`
	}
)

func (s *Server) evaluateAccess(_ context.Context, q *request) answer {
	var in authzenRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	agent := ""
	if in.Subject != nil {
		if in.Subject.Type != "agent" {
			return invalid("subject.type must be \"agent\"")
		}
		agent = in.Subject.ID
	}
	switch {
	case in.Action.Name != "call":
		return invalid("action.name must be \"call\": the trust gate decides tool calls")
	case in.Resource.Type != "tool":
		return invalid("resource.type must be \"tool\"")
	}
	d, a, ok := s.check(q.who, agent, in.Resource.ID, in.Context.Scope)
	if !ok {
		return a
	}
	var out authzenAnswer
	out.Decision = d.Allowed
	out.Context.Reason, out.Context.RequiredLevel, out.Context.AssignedLevel = d.Reason.String(), d.RequiredName(), d.AssignedName()
	return reply(http.StatusOK, out)
}
