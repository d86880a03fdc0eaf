package httpapi

import (
	"net/http"

	"github.com/agentsec/agentsec/budget"
)

// Codes are the stable values of a problem document's "code" member,
// which clients branch on (docs/api.md lists them).
const (
	CodeInvalidRequest    = "invalid_request"
	CodeUnauthenticated   = "unauthenticated"
	CodeForbidden         = "forbidden"
	CodeTrustDenied       = "trust_denied"
	CodeNotFound          = "not_found"
	CodeConflict          = "conflict"
	CodeBudgetExceeded    = "budget_exceeded"
	CodeRateLimited       = "rate_limited"
	CodeAuditUnavailable  = "audit_unavailable"
	CodeBudgetUnavailable = "budget_unavailable"
)

// titles are the problems' titles, by code.
var titles = map[string]string{
	CodeInvalidRequest:    "Invalid request",
	CodeUnauthenticated:   "Unauthenticated",
	CodeForbidden:         "Forbidden",
	CodeTrustDenied:       "Denied by the trust gate",
	CodeNotFound:          "Not found",
	CodeConflict:          "Conflict",
	CodeBudgetExceeded:    "Budget exceeded",
	CodeRateLimited:       "Too many open requests",
	CodeAuditUnavailable:  "Audit log unavailable",
	CodeBudgetUnavailable: "Budget store unavailable",
}

// problemType is the prefix of a problem's type URI: a tag URI (RFC
// 4151), which names the problem without pretending to be a page.
const problemType = "tag:agentsec.dev,2026:problem:"

// A problem is an RFC 9457 problem document, with agentsec's extension
// members.
type problem struct {
	Type          string        `json:"type"`
	Title         string        `json:"title"`
	Status        int           `json:"status"`
	Code          string        `json:"code"`
	Detail        string        `json:"detail,omitempty"`
	Reason        string        `json:"reason,omitempty"`
	DecisionID    *uint64       `json:"decision_id,omitempty"`
	RequiredLevel string        `json:"required_level,omitempty"`
	AssignedLevel string        `json:"assigned_level,omitempty"`
	Used          *budgetUsage  `json:"used,omitempty"`
	Limits        *budgetUsage  `json:"limits,omitempty"`
	headers       []headerValue // sent with it, such as WWW-Authenticate
}

type headerValue struct{ key, value string }

// fail returns the answer of a problem with code and status.
func fail(status int, code, detail string) answer {
	return answer{status: status, body: &problem{Type: problemType + code, Title: titles[code],
		Status: status, Code: code, Detail: detail}}
}

func invalid(detail string) answer { return fail(http.StatusBadRequest, CodeInvalidRequest, detail) }

func forbidden(detail string) answer { return fail(http.StatusForbidden, CodeForbidden, detail) }

func notFound(detail string) answer { return fail(http.StatusNotFound, CodeNotFound, detail) }

func conflict(detail string) answer { return fail(http.StatusConflict, CodeConflict, detail) }

// withDecision adds the decision's record index to a problem.
func (a answer) withDecision(seq uint64, logged bool) answer {
	if p, ok := a.body.(*problem); ok && logged {
		p.DecisionID = &seq
	}
	return a
}

// withBudget adds a session's state to a problem.
func (a answer) withBudget(st budget.State) answer {
	if p, ok := a.body.(*problem); ok && st.Limits.Calls > 0 {
		used, limits := usageOf(st.Used), limitsOf(st.Limits)
		p.Used, p.Limits = &used, &limits
	}
	return a
}
