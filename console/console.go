// Package console serves agentsec's operators on the admin listener,
// apart from the agents' port: the probes load balancers and Kubernetes
// use — /healthz, the process is alive, and /readyz, it can govern calls
// (its audit log takes appends and its budget store answers), with the
// failing part named — and /metrics, for Prometheus.
package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
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

// Handler serves /healthz and /readyz for stack, and, if metrics is not
// nil, /metrics.
//
// /healthz answers 200 while the process serves HTTP at all. /readyz
// answers 200 when the stack can govern calls, 503 otherwise, with one
// line a check: "audit log: ok", or its failure and cause — the same
// cause the process logs — and likewise "budget store". While the audit
// log is failing, each /readyz appends a "health.probe" record, which, if
// the store takes it, ends the failure: a probe is what brings a gateway
// that gets no calls back into service.
func Handler(stack *agentsec.Stack, metrics *Metrics) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
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
	return mux
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

// oneLine keeps a cause on its line.
func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}
