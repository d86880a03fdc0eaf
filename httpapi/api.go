// Package httpapi is agentsec's HTTP decision API: the trust gate, the
// budgets and the audit log of a Stack, over JSON, for programs in other
// languages (docs/api.md; the OpenAPI document is openapi.json).
//
// A Server is an http.Handler for the paths under /v1/. Every request but
// the OpenAPI document's bears a token, which names an agent or an
// operator: an agent acts only as itself, in the scopes its token holds,
// and reads only its own records; an operator reads everything and, as an
// admin, changes trust levels, each change recorded with its id first.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/internal/bearer"
)

// A Server serves the decision API of one Stack. Its fields are read
// when it first serves; set them before. Close it to settle the calls and
// reservations still open.
type Server struct {
	Stack *agentsec.Stack
	// Agents are the agents that may call, by the SHA-256 of their token.
	Agents []Credential
	// Operators are the operators that may call, by the same.
	Operators []Operator
	// MaxOpen bounds the reservations and calls one caller holds open at
	// once; 0 means DefaultMaxOpen.
	MaxOpen int
	// BodyTimeout bounds how long a request's body may take to arrive
	// once its headers have; 0 means 30 seconds.
	BodyTimeout time.Duration
	// Log receives the server's own events, such as a reservation whose
	// expiry could not be recorded; nil means slog.Default().
	Log *slog.Logger

	once    sync.Once
	mux     *http.ServeMux
	paths   *http.ServeMux // every route's path, any method: tells 405 from 404
	open    *openCalls
	replays *idempotency

	signing    sync.Mutex // held while signing a checkpoint a caller asked for
	lastSigned time.Time

	// credentials, once SetCredentials is called, replace Agents and
	// Operators.
	credentials atomic.Pointer[credentials]
}

type credentials struct {
	agents    []Credential
	operators []Operator
}

// SetCredentials replaces the agents and operators that may call, as a
// reload of the configuration does: from the next request on, only these
// tokens are known. It is safe to call while the Server serves.
func (s *Server) SetCredentials(agents []Credential, operators []Operator) {
	s.credentials.Store(&credentials{agents: slices.Clone(agents), operators: slices.Clone(operators)})
}

// A Credential maps an agent's bearer token, by its SHA-256, to the
// agent and the trust scopes the token may act in. "" among Scopes is the
// agent's unscoped assignment.
type Credential struct {
	TokenSHA256 [32]byte
	Agent       string
	Scopes      []string
}

// An Operator maps an operator's bearer token to its id and role.
type Operator struct {
	TokenSHA256 [32]byte
	ID          string
	// Admin lets the operator change things; without it the operator is
	// an auditor, who reads.
	Admin bool
}

// Defaults of a Server's bounds.
const (
	DefaultMaxOpen = 1000
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes       = 64 << 10
	defaultBodyTimeout = 30 * time.Second
)

// An access says who may use a route.
type access int

const (
	public    access = iota // no token
	agents                  // agents only: it acts as one
	operators               // operators only: it acts on agents
	anyone                  // agents, and operators of any role
)

// A route is one operation of the API.
type route struct {
	method, path string
	who          access
	// changes says the operation changes something: it takes an
	// Idempotency-Key, and an operator must be an admin.
	changes bool
	h       func(s *Server, ctx context.Context, q *request) answer
}

// routes is the API. The OpenAPI document must list exactly these
// (TestOpenAPIMatchesRoutes).
var routes = []route{
	{"GET", "/v1/openapi.json", public, false, (*Server).openAPI},
	{"POST", "/v1/trust/check", anyone, false, (*Server).checkTrust},
	{"POST", "/v1/access/v1/evaluation", anyone, false, (*Server).evaluateAccess},
	{"GET", "/v1/trust/assignments", anyone, false, (*Server).listAssignments},
	{"POST", "/v1/trust/assignments", operators, true, (*Server).assign},
	{"POST", "/v1/trust/revocations", operators, true, (*Server).revoke},
	{"GET", "/v1/budget/sessions/{session}", anyone, false, (*Server).getBudget},
	{"POST", "/v1/budget/sessions/{session}/reservations", agents, true, (*Server).reserve},
	{"POST", "/v1/budget/reservations/{id}/commit", agents, true, (*Server).commitReservation},
	{"POST", "/v1/budget/reservations/{id}/release", agents, true, (*Server).releaseReservation},
	{"POST", "/v1/budget/sessions/{session}/spending", agents, true, (*Server).recordSpending},
	{"POST", "/v1/calls", agents, true, (*Server).beginCall},
	{"POST", "/v1/calls/{id}/end", agents, true, (*Server).endCall},
	{"POST", "/v1/audit/events", anyone, true, (*Server).logEvent},
	{"GET", "/v1/audit/records", anyone, false, (*Server).queryRecords},
	{"GET", "/v1/audit/records/{seq}", anyone, false, (*Server).getRecord},
	{"GET", "/v1/audit/records/{seq}/proof", anyone, false, (*Server).getRecordProof},
	{"GET", "/v1/audit/checkpoint", anyone, false, (*Server).getCheckpoint},
}

// A request is what a route's handler gets: the caller and the body.
type request struct {
	r    *http.Request
	who  principal
	body []byte
}

// An answer is a handler's response: a status and a value to encode as
// JSON, or a *problem.
type answer struct {
	status int
	body   any
	// resume, on an answer to a change that was made but could not be
	// recorded, records it: a retry with the same Idempotency-Key runs
	// it instead of making the change again.
	resume func() answer
	// cause is the failure behind an answer that a store failed, for the
	// server's log alone: its text may name paths, hosts or database
	// users, which a caller has no business learning.
	cause error
}

// reply is the answer of a status and a value.
func reply(status int, body any) answer { return answer{status: status, body: body} }

func (s *Server) init() {
	s.once.Do(func() {
		if s.Log == nil {
			s.Log = slog.Default()
		}
		if s.MaxOpen <= 0 {
			s.MaxOpen = DefaultMaxOpen
		}
		if s.BodyTimeout <= 0 {
			s.BodyTimeout = defaultBodyTimeout
		}
		s.open = newOpenCalls(s)
		s.replays = newIdempotency()
		s.mux, s.paths = http.NewServeMux(), http.NewServeMux()
		// The most general pattern: only what no route takes.
		s.mux.HandleFunc("/", s.noRoute)
		paths := map[string]bool{}
		for _, rt := range routes {
			s.mux.Handle(rt.method+" "+rt.path, s.serveRoute(rt))
			if !paths[rt.path] {
				paths[rt.path] = true
				s.paths.Handle(rt.path, http.NotFoundHandler())
			}
		}
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	s.mux.ServeHTTP(w, r)
}

// noRoute answers a request no route takes: 401 to a caller without a
// token, who learns nothing of which routes exist; 405 for a path served
// with other methods; 404 otherwise.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	if s.authenticate(r).none() {
		s.write(w, unauthenticated())
		return
	}
	if _, p := s.paths.Handler(r); p != "" {
		w.Header().Set("Allow", s.allowed(r))
		s.write(w, fail(http.StatusMethodNotAllowed, CodeInvalidRequest, r.Method+" is not a method of "+r.URL.Path))
		return
	}
	s.write(w, notFound("no route "+r.Method+" "+r.URL.Path+"; the API is described at /v1/openapi.json"))
}

// allowed lists the methods the routes of r's path take.
func (s *Server) allowed(r *http.Request) string {
	var methods []string
	for _, m := range []string{"GET", "POST"} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := s.mux.Handler(r2); p != "" {
			methods = append(methods, m)
		}
	}
	return strings.Join(methods, ", ")
}

// serveRoute authenticates, authorizes and reads the body of a request
// for rt, and answers it — once per Idempotency-Key, for a route that
// changes something.
func (s *Server) serveRoute(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := &request{r: r}
		if rt.who != public {
			q.who = s.authenticate(r)
			if q.who.none() {
				s.write(w, unauthenticated())
				return
			}
			if a, refused := q.who.may(rt); refused {
				s.write(w, a)
				return
			}
		}
		if r.Method == http.MethodPost {
			body, a, ok := s.readBody(w, r)
			if !ok {
				s.write(w, a)
				return
			}
			q.body = body
		}
		if !rt.changes {
			s.write(w, rt.h(s, r.Context(), q))
			return
		}
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			s.write(w, rt.h(s, r.Context(), q))
			return
		}
		if !validIdempotencyKey(key) {
			s.write(w, invalid("Idempotency-Key must be 1 to 255 printable ASCII characters"))
			return
		}
		// The key is the caller's, for this route and query string; a
		// token of the caller's with another authority (an agent's in
		// other scopes) is refused it, neither told what the first was
		// allowed nor running the request twice.
		a, replayed := s.replays.do(q.who.id(), q.who.id()+"\x00"+r.Method+" "+r.URL.RequestURI()+"\x00"+key,
			q.who.authority(), sha256.Sum256(q.body), func() answer { return rt.h(s, r.Context(), q) })
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		s.write(w, a)
	})
}

// readBody reads a POST's JSON body, refusing one of the wrong type, too
// big, or too slow.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, answer, bool) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" && r.ContentLength != 0 {
		return nil, fail(http.StatusUnsupportedMediaType, CodeInvalidRequest, "the body must be JSON: Content-Type: application/json"), false
	}
	if r.ContentLength > MaxBodyBytes {
		return nil, fail(http.StatusRequestEntityTooLarge, CodeInvalidRequest, "the body is larger than "+strconv.Itoa(MaxBodyBytes)+" bytes"), false
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.BodyTimeout))
	buf := make([]byte, 0, min(max(r.ContentLength, 512), MaxBodyBytes+1))
	body, err := readAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes), buf)
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, fail(http.StatusRequestEntityTooLarge, CodeInvalidRequest, "the body is larger than "+strconv.Itoa(MaxBodyBytes)+" bytes"), false
	case err != nil:
		return nil, fail(http.StatusRequestTimeout, CodeInvalidRequest, "the body could not be read: "+err.Error()), false
	}
	return body, answer{}, true
}

// write sends an answer.
func (s *Server) write(w http.ResponseWriter, a answer) {
	if a.cause != nil {
		s.Log.Warn("httpapi: a store failed; the caller was told only that", "status", a.status, "err", a.cause)
	}
	h := w.Header()
	ct := "application/json"
	if p, isProblem := a.body.(*problem); isProblem {
		ct = "application/problem+json"
		for _, hv := range p.headers {
			h.Set(hv.key, hv.value)
		}
	}
	switch b := a.body.(type) {
	case rawJSON:
		h.Set("Content-Type", ct)
		w.WriteHeader(a.status)
		w.Write(b)
		return
	case encodedBody:
		if b.problem {
			ct = "application/problem+json"
		}
		h.Set("Content-Type", ct)
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(a.status)
		w.Write(b.data)
		return
	}
	data, err := json.Marshal(a.body)
	if err != nil {
		s.Log.Error("httpapi: encoding an answer", "err", err)
		a.status, data = http.StatusInternalServerError, []byte(`{"type":"about:blank","title":"Internal error","status":500}`)
	}
	h.Set("Content-Type", ct)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(a.status)
	w.Write(append(data, '\n'))
}

// rawJSON is an answer's body already encoded.
type rawJSON []byte

// Close settles every reservation and call still open as spent, each
// recorded, and stops their timers. The Server answers no more requests
// that begin one.
func (s *Server) Close() error {
	s.init()
	return s.open.closeAll(context.Background())
}

// A principal is who made a request: an agent or an operator.
type principal struct {
	agent    string
	scopes   []string
	operator string
	admin    bool
}

func (p principal) none() bool { return p.agent == "" && p.operator == "" }

// id names the principal uniquely across agents and operators.
func (p principal) id() string {
	if p.agent != "" {
		return "agent:" + p.agent
	}
	return "operator:" + p.operator
}

// authority names what p may do: who it is, and the scopes an agent's
// token acts in or whether an operator is an admin. Two tokens of the
// same authority are one caller to Idempotency-Key.
func (p principal) authority() string {
	if p.agent != "" {
		return p.id() + "\x00" + fmt.Sprintf("%q", slices.Sorted(slices.Values(p.scopes)))
	}
	return p.id() + "\x00" + strconv.FormatBool(p.admin)
}

// may reports whether p may use rt, and the refusal if not.
func (p principal) may(rt route) (answer, bool) {
	switch {
	case rt.who == agents && p.agent == "":
		return forbidden("operators act on no budget and call no tools: this route is an agent's"), true
	case rt.who == operators && p.operator == "":
		return forbidden("an agent can't change trust levels, its own or another's: this route is an operator's"), true
	case rt.changes && p.operator != "" && !p.admin:
		return forbidden("operator " + p.operator + " is an auditor, who reads; changes need the admin role"), true
	}
	return answer{}, false
}

// OperatorBySum says which operator has the token whose SHA-256 is sum,
// and whether the operator is an admin: for the admin listener, which
// knows the API's operators. ok is false for an unknown token or an
// agent's. Every credential is compared, in constant time.
func (s *Server) OperatorBySum(sum [32]byte) (id string, admin, ok bool) {
	who := s.principalOf(sum)
	return who.operator, who.admin, who.operator != ""
}

// authenticate returns the principal whose token the request bears; it
// compares every credential, in constant time.
func (s *Server) authenticate(r *http.Request) principal {
	token, found := bearer.Token(r)
	if !found {
		return principal{}
	}
	return s.principalOf(sha256.Sum256([]byte(token)))
}

// principalOf returns the principal whose token's SHA-256 is sum.
func (s *Server) principalOf(sum [32]byte) principal {
	var who principal
	n := 0
	agents, operators := s.Agents, s.Operators
	if set := s.credentials.Load(); set != nil {
		agents, operators = set.agents, set.operators
	}
	for i := range agents {
		if subtle.ConstantTimeCompare(sum[:], agents[i].TokenSHA256[:]) == 1 {
			who, n = principal{agent: agents[i].Agent, scopes: agents[i].Scopes}, n+1
		}
	}
	for i := range operators {
		if subtle.ConstantTimeCompare(sum[:], operators[i].TokenSHA256[:]) == 1 {
			who, n = principal{operator: operators[i].ID, admin: operators[i].Admin}, n+1
		}
	}
	if n != 1 {
		return principal{}
	}
	return who
}

func unauthenticated() answer {
	a := fail(http.StatusUnauthorized, CodeUnauthenticated, "a valid bearer token is required (Authorization: Bearer <token>)")
	a.body.(*problem).headers = []headerValue{{"WWW-Authenticate", `Bearer realm="agentsec"`}, {"Connection", "close"}}
	return a
}
