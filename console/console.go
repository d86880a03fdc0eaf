// Package console serves agentsec's operators on the admin listener,
// apart from the agents' port: the console — pages for signed-in
// operators: live decisions, audit search with each record's inclusion
// proof, and the agents' trust levels, which admins change — the probes
// load balancers and Kubernetes use — /healthz, the process is alive, and
// /readyz, it can govern calls (its audit log takes appends and its
// budget store answers), with the failing part named — /metrics, for
// Prometheus, and POST /reload.
package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/internal/textsafe"
)

// EventProbe is the audit event /readyz appends while the log is failing,
// to find out whether it takes appends again: with calls denied and the
// balancer sending none, nothing else would.
const EventProbe = "health.probe"

// probeTimeout bounds each of /readyz's checks.
const probeTimeout = 2 * time.Second

// probeSession is the budget session /readyz asks the budget store about;
// it never exists.
const probeSession = "agentsec/readyz"

// Config is what the admin listener serves.
type Config struct {
	// Stack is the stack the probes check. Required.
	Stack *agentsec.Stack
	// Metrics, if set, is served at /metrics.
	Metrics *Metrics
	// Operator says which operator has the token whose SHA-256 is sum,
	// and whether that operator is an admin; ok is false for an unknown
	// token. Without it nobody is an operator: the console and /reload
	// let no one in.
	Operator func(sum [32]byte) (id string, admin, ok bool)
	// Sessions, if set, are the gateway's MCP sessions, for the sessions
	// page: a gateway's open sessions, their budgets, and, for an admin,
	// a way to end one.
	Sessions Sessions
	// Upstreams, if set, are the gateway's upstreams, for the upstreams
	// page: whether each is up (from Metrics), the tools each listed, and
	// which agents may call them.
	Upstreams Upstreams
	// CheckpointCopies says where the log's checkpoints are copied, away
	// from it, for the integrity page; empty for nowhere.
	CheckpointCopies string
	// Logger receives the console's own failures; nil means
	// slog.Default().
	Logger *slog.Logger
	// Reload, if set, is run by an admin's POST /reload, with the
	// admin's id: it re-reads the configuration and puts it into force.
	Reload func(ctx context.Context, operator string) (agentsec.Reloaded, error)
}

// Handler serves the admin listener: /healthz and /readyz, and, as cfg
// provides them, /metrics and POST /reload.
//
// /healthz answers 200 while the process serves HTTP at all. /readyz
// answers 200 when the stack can govern calls, 503 otherwise, with one
// line a check: "audit log: ok", or its failure and cause — the same
// cause the process logs — and likewise "budget store". While the audit
// log is failing, each /readyz appends a "health.probe" record, which, if
// the store takes it, ends the failure: a probe is what brings a gateway
// that gets no calls back into service.
//
// POST /reload needs an admin operator's bearer token: 401 without a
// known one, 403 for an auditor. It answers 200 with the changes, one a
// line, or 422 with why the configuration was refused — the running one
// is kept — or 503 if the changes could not be recorded. Requests from
// another origin that change something are refused (403), whatever they
// bear.
func Handler(cfg Config) http.Handler {
	stack := cfg.Stack
	mux := http.NewServeMux()
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		lines, ready := readiness(r.Context(), stack)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, strings.Join(lines, "\n")+"\n")
	})
	if cfg.Reload != nil {
		mux.HandleFunc("POST /reload", cfg.reload)
	}
	if cfg.Operator != nil {
		newUI(cfg).routes(mux)
	}
	// Every answer carries the console's security headers, the mux's own
	// redirects and 404s too.
	withHeaders := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w.Header())
		mux.ServeHTTP(w, r)
	})
	return http.NewCrossOriginProtection().Handler(withHeaders)
}

// readiness runs the checks and reports each, and whether all passed.
func readiness(ctx context.Context, stack *agentsec.Stack) ([]string, bool) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ready := true
	check := func(name string, err error) string {
		if err != nil {
			ready = false
			return name + ": " + oneLine(err.Error())
		}
		return name + ": ok"
	}
	audit := stack.Audit.Err()
	if audit != nil {
		// Try an append: if it lands, the log has recovered.
		if _, err := stack.Audit.Log(ctx, probeRecord()); err == nil {
			audit = stack.Audit.Err()
		}
	}
	_, berr := stack.Budget.Store().Get(ctx, probeSession)
	if errors.Is(berr, budget.ErrUnknownSession) {
		berr = nil
	}
	return []string{check("audit log", audit), check("budget store", berr)}, ready
}

// probeRecord is the record a readiness probe appends.
func probeRecord() audit.Record {
	return audit.Record{Event: EventProbe, Reason: "readiness probe while the audit log was failing"}
}

// oneLine keeps a cause on its line, with nothing in it that could act
// on a terminal reading /readyz: textsafe's, as the command's.
var oneLine = textsafe.OneLine

func (cfg Config) logger() *slog.Logger {
	if cfg.Logger != nil {
		return cfg.Logger
	}
	return slog.Default()
}
