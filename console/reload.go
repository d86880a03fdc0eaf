package console

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/internal/bearer"
)

// reload serves POST /reload: an admin operator has the configuration
// file read again and put into force.
func (cfg Config) reload(w http.ResponseWriter, r *http.Request) {
	id, admin, ok := cfg.bearerOperator(r)
	switch {
	case !ok:
		w.Header().Set("WWW-Authenticate", `Bearer realm="agentsec admin"`)
		plain(w, http.StatusUnauthorized, "an admin operator's bearer token is required")
		return
	case !admin:
		plain(w, http.StatusForbidden, "operator "+id+" is an auditor, who reads; a reload needs the admin role")
		return
	}
	res, err := cfg.Reload(r.Context(), id)
	switch {
	case errors.Is(err, agentsec.ErrAuditUnavailable):
		plain(w, http.StatusServiceUnavailable, "reload not applied: "+oneLine(err.Error()))
		return
	case err != nil:
		plain(w, http.StatusUnprocessableEntity, "reload refused, the running configuration is kept: "+oneLine(err.Error()))
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "reloaded %s: %d changes\n", cfg.Stack.TrustGate.Version(), len(res.Changes))
	for _, c := range res.Changes {
		b.WriteString("- " + oneLine(c) + "\n")
	}
	plain(w, http.StatusOK, strings.TrimSuffix(b.String(), "\n"))
}

// plain answers status with one text message.
func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

// bearerOperator returns the operator whose token the request bears.
func (cfg Config) bearerOperator(r *http.Request) (id string, admin, ok bool) {
	token, found := bearer.Token(r)
	if !found || cfg.Operator == nil {
		return "", false, false
	}
	return cfg.Operator(sha256.Sum256([]byte(token)))
}
