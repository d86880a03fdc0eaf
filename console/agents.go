package console

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/trust"
)

// An assignmentRow is an assignment as the agents page shows it.
type assignmentRow struct {
	Agent, Scope, Level, Expires string
}

// agentsView is the agents page's view, with an error or a notice.
func (u *ui) agentsView(op *operator, errMsg, notice string) *view {
	g := u.cfg.Stack.TrustGate
	v := &view{Title: "Agents and trust", Page: "agents", Operator: op, Error: errMsg, Notice: notice,
		Ladder: strings.Join(g.Ladder().Levels(), " < "), Levels: g.Ladder().Levels()}
	now := time.Now()
	for _, a := range g.Assignments() {
		row := assignmentRow{Agent: a.Agent, Scope: a.Scope, Level: a.Level}
		if !a.Expires.IsZero() {
			row.Expires = a.Expires.UTC().Format(time.RFC3339)
			if !now.Before(a.Expires) {
				row.Expires += " (expired)"
			}
		}
		v.Assignments = append(v.Assignments, row)
	}
	return v
}

func (u *ui) agentsPage(w http.ResponseWriter, r *http.Request, op *operator) {
	u.render(w, http.StatusOK, "agents", u.agentsView(op, "", r.URL.Query().Get("done")))
}

// assign puts an admin's assignment into force: recorded first, with the
// admin's id and reason, by the stack's TrustGate.
func (u *ui) assign(w http.ResponseWriter, r *http.Request, op *operator) {
	f := r.PostForm
	a := trust.Assignment{Agent: f.Get("agent"), Scope: f.Get("scope"), Level: f.Get("level")}
	if s := f.Get("expires"); s != "" {
		t, err := parseFormTime(s)
		if err != nil {
			u.render(w, http.StatusBadRequest, "agents", u.agentsView(op, "expires: "+err.Error(), ""))
			return
		}
		a.Expires = t
	}
	reason := strings.TrimSpace(f.Get("reason"))
	if msg := checkChangeForm(a.Agent, reason); msg != "" {
		u.render(w, http.StatusBadRequest, "agents", u.agentsView(op, msg, ""))
		return
	}
	rec, err := u.cfg.Stack.TrustGate.AssignBy(r.Context(), a, agentsec.Change{Operator: op.ID, Reason: reason})
	switch {
	case errors.Is(err, agentsec.ErrAuditUnavailable):
		u.render(w, http.StatusServiceUnavailable, "agents", u.agentsView(op, "the change could not be recorded, so it was not made: "+oneLine(err.Error()), ""))
		return
	case err != nil: // refused before it was recorded: an unknown level, say
		u.render(w, http.StatusBadRequest, "agents", u.agentsView(op, changeRefused(err), ""))
		return
	}
	u.changed(w, r, "agent "+a.Agent+" now holds "+a.Level, rec.Seq)
}

// revoke removes an agent's assignment in a scope.
func (u *ui) revoke(w http.ResponseWriter, r *http.Request, op *operator) {
	f := r.PostForm
	agent, scope, reason := f.Get("agent"), f.Get("scope"), strings.TrimSpace(f.Get("reason"))
	if msg := checkChangeForm(agent, reason); msg != "" {
		u.render(w, http.StatusBadRequest, "agents", u.agentsView(op, msg, ""))
		return
	}
	rec, err := u.cfg.Stack.TrustGate.RevokeBy(r.Context(), agent, scope, agentsec.Change{Operator: op.ID, Reason: reason})
	switch {
	case errors.Is(err, agentsec.ErrNoAssignment):
		u.render(w, http.StatusNotFound, "agents", u.agentsView(op, changeRefused(err), ""))
		return
	case errors.Is(err, agentsec.ErrAuditUnavailable):
		u.render(w, http.StatusServiceUnavailable, "agents", u.agentsView(op, "the change could not be recorded, so it was not made: "+oneLine(err.Error()), ""))
		return
	case err != nil:
		u.render(w, http.StatusBadRequest, "agents", u.agentsView(op, changeRefused(err), ""))
		return
	}
	u.changed(w, r, "agent "+agent+"'s level is revoked", rec.Seq)
}

// changed sends the admin back to the agents page, which says what was
// done and which record says so (POST, redirect, GET: a reload of the
// page does not make the change again).
func (u *ui) changed(w http.ResponseWriter, r *http.Request, what string, seq uint64) {
	http.Redirect(w, r, "/agents?done="+url.QueryEscape(what+", recorded as record "+strconv.FormatUint(seq, 10)), http.StatusSeeOther)
}

// checkChangeForm checks what every change names: the agent, and why.
func checkChangeForm(agent, reason string) string {
	switch {
	case agent == "":
		return "name the agent"
	case reason == "":
		return "say why: the reason goes into the audit log"
	}
	return ""
}

// changeRefused says why the trust gate refused a change, without the
// packages' prefixes.
func changeRefused(err error) string {
	return oneLine(strings.TrimPrefix(strings.TrimPrefix(err.Error(), "agentsec: "), "trust: "))
}
