package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
)

// Sessions is the gateway's side of the sessions page; an
// *mcpgate.Gateway is one.
type Sessions interface {
	// SessionList returns the sessions this process holds open.
	SessionList() []mcpgate.SessionInfo
	// EndSession ends one, and reports false for one it does not hold.
	EndSession(ctx context.Context, id string) (bool, error)
}

// EventSessionEnd records an operator ending a session.
const EventSessionEnd = "session.end"

// sessionRow is a session as the page shows it.
type sessionRow struct {
	ID, Agent, LastActive, Calls, Tokens string
}

func (u *ui) sessionsView(r *http.Request, op *operator, errMsg, notice string) *view {
	v := &view{Title: "Sessions", Page: "sessions", Operator: op, Error: errMsg, Notice: notice}
	for _, s := range u.cfg.Sessions.SessionList() {
		row := sessionRow{ID: s.ID, Agent: s.Agent, LastActive: time.Since(s.LastActive).Round(time.Second).String() + " ago"}
		st, err := u.cfg.Stack.Budget.CheckBudget(r.Context(), s.ID)
		if err != nil {
			row.Calls, row.Tokens = "unknown: "+oneLine(err.Error()), ""
		} else {
			row.Calls = fmt.Sprintf("%d of %d", st.Used.Calls, st.Limits.Calls)
			row.Tokens = fmt.Sprintf("%d of %d", st.Used.Tokens, st.Limits.Tokens)
		}
		v.Sessions = append(v.Sessions, row)
	}
	return v
}

func (u *ui) sessionsPage(w http.ResponseWriter, r *http.Request, op *operator) {
	u.render(w, http.StatusOK, "sessions", u.sessionsView(r, op, "", r.URL.Query().Get("done")))
}

// endSession ends a session for an admin: recorded first, with the
// admin's id and reason; if the record can't be written, the session goes
// on.
func (u *ui) endSession(w http.ResponseWriter, r *http.Request, op *operator) {
	id, reason := r.PostForm.Get("session"), strings.TrimSpace(r.PostForm.Get("reason"))
	if msg := checkChangeForm(id, reason); msg != "" {
		u.render(w, http.StatusBadRequest, "sessions", u.sessionsView(r, op, strings.Replace(msg, "name the agent", "name the session", 1), ""))
		return
	}
	var agent string
	for _, s := range u.cfg.Sessions.SessionList() {
		if s.ID == id {
			agent = s.Agent
		}
	}
	if agent == "" {
		u.render(w, http.StatusNotFound, "sessions", u.sessionsView(r, op, "no session "+strconv.Quote(id)+" is open here", ""))
		return
	}
	rec, err := u.cfg.Stack.Audit.Log(r.Context(), audit.Record{Event: EventSessionEnd, Agent: agent, Session: id, Reason: reason,
		Attrs: map[string]string{"operator": op.ID, "source": "console"}})
	switch {
	case errors.Is(err, audit.ErrInvalidRecord): // a reason too big, or not UTF-8
		u.render(w, http.StatusBadRequest, "sessions", u.sessionsView(r, op, oneLine(strings.TrimPrefix(err.Error(), "audit: ")), ""))
		return
	case err != nil:
		u.render(w, http.StatusServiceUnavailable, "sessions", u.sessionsView(r, op, "the change could not be recorded, so the session goes on: "+oneLine(err.Error()), ""))
		return
	}
	if _, err := u.cfg.Sessions.EndSession(r.Context(), id); err != nil {
		u.render(w, http.StatusServiceUnavailable, "sessions", u.sessionsView(r, op, oneLine(err.Error()), ""))
		return
	}
	http.Redirect(w, r, "/sessions?done="+url.QueryEscape("session "+id+" of agent "+agent+" ended, recorded as record "+strconv.FormatUint(rec.Seq, 10)), http.StatusSeeOther)
}
