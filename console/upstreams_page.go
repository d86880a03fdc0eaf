package console

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/agentsec/agentsec"
)

// Upstreams is the gateway's side of the upstreams page; an
// *mcpgate.Gateway is one.
type Upstreams interface {
	// UpstreamNames returns the upstreams' names, in the configuration's
	// order.
	UpstreamNames() []string
	// ListedTools returns the tools each upstream has listed in any
	// session, by the names the trust gate judges.
	ListedTools() map[string][]string
}

// upstreamRow is an upstream as its page shows it.
type upstreamRow struct {
	Name, State, StateClass, Failures string
	Tools                             []toolRow
}

type toolRow struct{ Name, Requires, Agents string }

func (u *ui) upstreamsPage(w http.ResponseWriter, r *http.Request, op *operator) {
	v := &view{Title: "Upstreams", Page: "upstreams", Operator: op}
	g := u.cfg.Stack.TrustGate
	policy := g.Policy()
	var agents []string
	for _, a := range g.Assignments() {
		if len(agents) == 0 || agents[len(agents)-1] != a.Agent {
			agents = append(agents, a.Agent)
		}
	}
	tools := u.cfg.Upstreams.ListedTools()
	for _, name := range u.cfg.Upstreams.UpstreamNames() {
		row := upstreamRow{Name: name, State: "not tried yet", StateClass: "state-unknown", Failures: "0"}
		if u.cfg.Metrics != nil {
			s := u.cfg.Metrics.upstreams.series(name)
			switch s.state.Load() {
			case 1:
				row.State, row.StateClass = "up", "state-up"
			case 2:
				row.State, row.StateClass = "down", "state-down"
			}
			row.Failures = strconv.FormatUint(s.failures.Load(), 10)
		}
		for _, tool := range tools[name] {
			t := toolRow{Name: tool, Requires: "no rule: denied to every agent"}
			if lv, ok := policy.Required(tool); ok {
				t.Requires = policy.Ladder().LevelName(lv)
			}
			var may []string
			for _, agent := range agents {
				if g.Check(agentsec.Request{Agent: agent, Tool: tool}).Allowed {
					may = append(may, agent)
				}
			}
			t.Agents = strings.Join(may, ", ")
			if t.Agents == "" {
				t.Agents = "none"
			}
			row.Tools = append(row.Tools, t)
		}
		v.Upstreams = append(v.Upstreams, row)
	}
	u.render(w, http.StatusOK, "upstreams", v)
}
