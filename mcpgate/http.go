package mcpgate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/bearer"
	"github.com/agentsec/agentsec/oauth"
)

// A Gateway serves many MCP clients over streamable HTTP. Each client
// authenticates with a bearer token, which names its agent; each MCP
// session is proxied to connections of its own to the upstream servers,
// and its session id is its budget session.
//
// The gateway speaks the server side of MCP's streamable HTTP transport
// itself: a POST carries one message; a request's answer comes back as
// JSON, or as an event stream when the upstream sends something first
// (progress, or a request of its own such as sampling); a GET opens the
// session's stream for messages that belong to no request; DELETE ends
// the session. A session starts with initialize, whose answer carries its
// Mcp-Session-Id.
type Gateway struct {
	Stack *agentsec.Stack
	// Agents are the agents that may connect, by the SHA-256 of their
	// bearer token.
	Agents []Credential
	// OAuth, if set, also admits agents by OAuth 2.1 access tokens (JWTs)
	// its issuers signed, and serves the protected-resource metadata that
	// tells clients where to get one. A session opened with such a token
	// stays bound to its issuer and subject. SetOAuth replaces it while
	// the Gateway serves.
	OAuth *oauth.Verifier
	// Upstreams are the servers behind the gateway; each session
	// connects to each of them.
	Upstreams []Upstream
	// MaxRequestBytes bounds a request body; 0 means
	// DefaultMaxMessageBytes (4 MiB).
	MaxRequestBytes int64
	// RequestBodyTimeout bounds how long a request's body may take to
	// arrive once its headers have; 0 means DefaultRequestBodyTimeout.
	// Responses are not bounded: one may be an event stream as long as a
	// tool call.
	RequestBodyTimeout time.Duration
	// MaxSessions bounds the sessions open at once; 0 means
	// DefaultMaxSessions. A new session beyond it is refused with 503.
	MaxSessions int
	// MaxSessionsPerAgent bounds the sessions one agent holds at once, so
	// that one token can't take every session (each with its own
	// upstream processes) and lock the other agents out; 0 means a
	// quarter of MaxSessions, at least 1. A new session beyond it is
	// refused with 429.
	MaxSessionsPerAgent int
	// IdleTimeout ends a session no request has touched for that long;
	// 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// LocalOnly refuses requests whose Host or Origin is not a loopback
	// name or address, which stops DNS-rebinding attacks on a gateway
	// listening on loopback.
	LocalOnly bool
	// Tokens counts tool results; nil means a TiktokenCounter.
	Tokens TokenCounter
	// Log receives the gateway's own events; nil means slog.Default().
	Log *slog.Logger
	// Sessions, if set, shares sessions with the gateway's other
	// replicas, so that any of them can serve any session's requests.
	Sessions SessionStore
	// AllowUnlistedTools is Proxy.AllowUnlistedTools for every session.
	AllowUnlistedTools bool
	// Observer is Proxy.Observer for every session.
	Observer Observer

	once     sync.Once
	mu       sync.Mutex
	sessions map[string]*httpSession
	perAgent map[string]int // sessions held, by agent
	stop     chan struct{}
	closed   bool
	running  sync.WaitGroup // sessions' routers, until their upstreams are closed
	// listed are the tools the upstreams listed, in any session.
	listed listedTools
	// setAgents, once SetAgents is called, replaces Agents.
	setAgents atomic.Pointer[[]Credential]
	// setOAuth, once SetOAuth is called, replaces OAuth.
	setOAuth atomic.Pointer[oauthVerifier]
	// refusals are the genuine tokens refused and recorded already.
	refusals recordedRefusals
	// issuerDownLogged holds, for each issuer URL, an *atomic.Int64: when
	// the last failure to reach it was logged, on the monotonic clock from
	// issuerDownEpoch, or 0 — one line per issuer and issuerDownLogEvery,
	// however many requests it fails, and one issuer's failures never hide
	// another's. Its keys are configured issuers', so it stays small.
	issuerDownLogged sync.Map
}

// maxRecordedRefusals bounds the tokens remembered as refused.
const maxRecordedRefusals = 10_000

// recordedRefusals remembers the genuine tokens whose refusal was
// recorded, until they expire: a token refused for a scope or an agent
// is recorded once, not once per replay, or anyone the issuer gives a
// token could fill the log with one.
type recordedRefusals struct {
	mu    sync.Mutex
	until map[string]time.Time // by issuer and token id
}

// first reports whether id's refusal is not recorded yet, and remembers
// it as recorded.
func (rr *recordedRefusals) first(id *oauth.Identity) bool {
	key := id.Issuer + "\x00" + id.TokenID
	now := time.Now()
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if until, seen := rr.until[key]; seen && now.Before(until) {
		return false
	}
	if rr.until == nil {
		rr.until = map[string]time.Time{}
	}
	if len(rr.until) >= maxRecordedRefusals {
		for k, until := range rr.until {
			if !now.Before(until) || len(rr.until) >= maxRecordedRefusals {
				delete(rr.until, k)
			}
		}
	}
	rr.until[key] = id.Expires
	return true
}

// oauthVerifier holds the verifier SetOAuth set, which may be nil.
type oauthVerifier struct{ v *oauth.Verifier }

// A SessionInfo describes a session the gateway holds open.
type SessionInfo struct {
	// ID is the session's Mcp-Session-Id, which is also its budget
	// session.
	ID    string
	Agent string
	// LastActive is when a request last touched it.
	LastActive time.Time
}

// SessionList returns the sessions this gateway holds open — not those
// other replicas hold — sorted by agent, then id.
func (g *Gateway) SessionList() []SessionInfo {
	g.mu.Lock()
	out := make([]SessionInfo, 0, len(g.sessions))
	held := make([]*httpSession, 0, len(g.sessions))
	for _, s := range g.sessions {
		held = append(held, s)
	}
	g.mu.Unlock()
	for _, s := range held {
		s.mu.Lock()
		out = append(out, SessionInfo{ID: s.id, Agent: s.agent, LastActive: s.lastActive})
		s.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		if a.Agent != b.Agent {
			return strings.Compare(a.Agent, b.Agent)
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// EndSession ends a session this gateway holds, as its client's DELETE
// would: here, and in the SessionStore, so that no replica serves it
// again. It reports false, and does nothing, for a session it does not
// hold.
func (g *Gateway) EndSession(ctx context.Context, id string) (bool, error) {
	g.mu.Lock()
	s := g.sessions[id]
	g.mu.Unlock()
	if s == nil {
		return false, nil
	}
	g.endSession(id)
	if g.Sessions != nil {
		if err := g.Sessions.DeleteSession(ctx, id); err != nil {
			return true, fmt.Errorf("the session ended here, but the other replicas could not be told: %w", err)
		}
	}
	return true, nil
}

// UpstreamNames returns the names of the gateway's upstreams, in order.
func (g *Gateway) UpstreamNames() []string {
	names := make([]string, len(g.Upstreams))
	for i, u := range g.Upstreams {
		names[i] = u.Name
	}
	return names
}

// ListedTools returns the tools each upstream has listed, in any session
// of this gateway — by the names the trust gate judges, sorted — at most
// 1,000 for each.
func (g *Gateway) ListedTools() map[string][]string { return g.listed.all() }

// OpenSessions returns how many sessions the gateway holds open.
func (g *Gateway) OpenSessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sessions)
}

// Defaults of a Gateway's limits.
const (
	DefaultMaxSessions = 1000
	DefaultIdleTimeout = 30 * time.Minute
)

// A Credential maps a bearer token, by its SHA-256, to an agent.
type Credential struct {
	TokenSHA256 [32]byte
	Agent       string
}

const sessionHeader = "Mcp-Session-Id"

func (g *Gateway) init() {
	g.once.Do(func() {
		g.sessions = map[string]*httpSession{}
		g.stop = make(chan struct{})
		if g.Tokens == nil {
			g.Tokens = &TiktokenCounter{}
		}
		if g.Log == nil {
			g.Log = slog.Default()
		}
		if g.MaxRequestBytes <= 0 {
			g.MaxRequestBytes = DefaultMaxMessageBytes
		}
		if g.MaxSessions <= 0 {
			g.MaxSessions = DefaultMaxSessions
		}
		if g.MaxSessionsPerAgent <= 0 {
			g.MaxSessionsPerAgent = max(1, g.MaxSessions/4)
		}
		g.perAgent = map[string]int{}
		if g.IdleTimeout <= 0 {
			g.IdleTimeout = DefaultIdleTimeout
		}
		go g.reapIdle()
	})
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.init()
	// A body too big, or too slow, is refused before anything else reads
	// it, authenticated or not (front.go).
	r, ok := admitRequest(w, r, g.MaxRequestBytes, g.RequestBodyTimeout)
	if !ok {
		return
	}
	if g.LocalOnly && !localRequest(r) {
		closeAfterReply(w)
		http.Error(w, "agentsec: this gateway only answers requests addressed to localhost", http.StatusForbidden)
		return
	}
	verifier := g.oauth()
	if verifier != nil && r.Method == http.MethodGet && slices.Contains(verifier.MetadataPaths(), r.URL.Path) {
		verifier.ServeMetadata(w, r)
		return
	}
	c, refused := g.authenticate(r, verifier)
	if refused != nil {
		g.refuseCaller(w, r, verifier, refused)
		return
	}
	if r.Method == http.MethodDelete {
		g.deleteSession(w, r, c)
		return
	}
	var s *httpSession
	if id := r.Header.Get(sessionHeader); id != "" {
		var err error
		s, err = g.takeUp(r.Context(), id, c)
		if e, ok := errors.AsType[*notOwnerError](err); ok {
			g.recordNotOwner(r.Context(), id, c, e.owner)
		}
		switch {
		case errors.Is(err, errNoSession):
			http.Error(w, "agentsec: unknown MCP session; start a new one with initialize", http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, "agentsec: "+err.Error(), sessionRefusalStatus(err))
			return
		}
		s.touch(+1)
		defer s.touch(-1)
	}
	switch r.Method {
	case http.MethodPost:
		g.post(w, r, c, s)
	case http.MethodGet:
		if s == nil {
			http.Error(w, "agentsec: GET needs an Mcp-Session-Id; start a session with initialize (POST)", http.StatusBadRequest)
			return
		}
		if !acceptsEventStream(r) {
			http.Error(w, "agentsec: GET opens an event stream: Accept must include text/event-stream", http.StatusNotAcceptable)
			return
		}
		s.serveStandalone(w, r)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "agentsec: MCP over HTTP uses POST, GET and DELETE", http.StatusMethodNotAllowed)
	}
}

// post takes one JSON-RPC message from the client.
func (g *Gateway) post(w http.ResponseWriter, r *http.Request, c caller, s *httpSession) {
	if mediaType(r.Header.Get("Content-Type")) != "application/json" {
		http.Error(w, "agentsec: a POST carries one JSON-RPC message: Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, g.MaxRequestBytes), r.ContentLength, int(g.MaxRequestBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) || r.ContentLength > g.MaxRequestBytes {
			writeJSONError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest, fmt.Sprintf("agentsec: message larger than %d bytes", g.MaxRequestBytes))
			return
		}
		status := http.StatusBadRequest
		if errors.Is(err, os.ErrDeadlineExceeded) {
			status = http.StatusRequestTimeout
		}
		http.Error(w, "agentsec: reading the request: "+err.Error(), status)
		return
	}
	msg, errFrame := decodeFrame(body, httpFraming)
	if errFrame != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		w.Write(errFrame)
		return
	}
	if msg == nil {
		writeJSONError(w, http.StatusBadRequest, nil, codeInvalidRequest, "agentsec: the request body is empty")
		return
	}
	req, isRequest := msg.(*jsonrpc.Request)
	call := isRequest && req.IsCall()
	if s == nil {
		switch {
		case call && req.Method == "initialize":
			if s, err = g.startSession(rand.Text(), c, nil); err != nil {
				writeJSONError(w, sessionRefusalStatus(err), idJSON(req.ID), codeInternal, "agentsec: "+err.Error())
				return
			}
			s.touch(+1)
			defer s.touch(-1)
			w.Header().Set(sessionHeader, s.id)
		case call && req.Method == "server/discover":
			// The gateway keeps sessions: each is a budget session. Clients
			// of the sessionless protocol fall back to initialize on this.
			writeJSONError(w, http.StatusOK, idJSON(req.ID), codeMethodNotFound,
				"agentsec: this gateway keeps MCP sessions (each is a budget session): send initialize")
			return
		default:
			writeJSONError(w, http.StatusBadRequest, idJSON(reqID(msg)), codeInvalidRequest,
				"agentsec: no MCP session: send initialize first, then its Mcp-Session-Id with every request")
			return
		}
	}
	if !call {
		ok, refused := s.deliver(msg, c.attrs)
		switch {
		case !ok:
			http.Error(w, "agentsec: the MCP session has ended", http.StatusNotFound)
		case refused != nil:
			writeJSONError(w, http.StatusBadRequest, nil, refused.Code, refused.Message)
		default:
			w.WriteHeader(http.StatusAccepted)
		}
		return
	}
	st, ok := s.openStream(req)
	if !ok {
		writeJSONError(w, http.StatusBadRequest, idJSON(req.ID), codeInvalidRequest, "agentsec: a request with this id is already in progress")
		return
	}
	st.bind(w, r, acceptsJSON(r), s.closed)
	if ok, _ := s.deliver(msg, c.attrs); !ok {
		s.dropStream(st)
		http.Error(w, "agentsec: the MCP session has ended", http.StatusNotFound)
		return
	}
	s.serveRequest(st)
}

// reqID is the id of a request or response, if it has one.
func reqID(msg jsonrpc.Message) jsonrpc.ID {
	switch m := msg.(type) {
	case *jsonrpc.Request:
		return m.ID
	case *jsonrpc.Response:
		return m.ID
	}
	return jsonrpc.ID{}
}

func writeJSONError(w http.ResponseWriter, status int, id json.RawMessage, code int64, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(errorFrame(id, code, msg))
}

// SetAgents replaces the agents that may connect, as a reload of the
// configuration does: from the next request on, only these tokens are
// known. A session stays its agent's, but a request with a token no
// longer known is refused. It is safe to call while the Gateway serves.
func (g *Gateway) SetAgents(agents []Credential) {
	agents = slices.Clone(agents)
	g.setAgents.Store(&agents)
}

// EventAuthRefused is the audit event of a genuine OAuth token refused:
// its subject maps to no agent, or it lacks a required scope.
const EventAuthRefused = "auth.refused"

// EventSessionRefused is the audit event of a session used by a caller
// that did not open it: its id leaked, or is being guessed at, by an
// agent with a valid token.
const EventSessionRefused = "session.refused"

// recordNotOwner records that a caller presented another's session id.
// The caller is answered as for an unknown session whether or not the
// record is written: it is refused either way.
func (g *Gateway) recordNotOwner(ctx context.Context, id string, c caller, owner string) {
	g.observeAuthRefused(AuthRefusedNotSessionOwner)
	rec := audit.Record{Event: EventSessionRefused, Agent: c.agent, Session: id, Outcome: audit.OutcomeDenied,
		Reason: fmt.Sprintf("the session was opened by %s, not by this caller", describeOwner(owner)), Attrs: c.attrs}
	if _, err := g.Stack.Audit.Log(ctx, rec); err != nil {
		g.Log.Error("agentsec: recording a session used by another caller", "session", id, "agent", c.agent, "err", err)
	}
}

// describeOwner names a session's owner (see caller) for a record: its
// agent, and for an OAuth caller, that it signed in with a token.
func describeOwner(owner string) string {
	if i := strings.LastIndex(owner, " oauth:"); i >= 0 && len(owner)-i == len(" oauth:")+2*sha256.Size {
		return fmt.Sprintf("agent %q signed in with an OAuth token", owner[:i])
	}
	return fmt.Sprintf("agent %q with its static token", owner)
}

// A caller is who a request's token says it is.
type caller struct {
	agent string
	// owner is what a session is bound to: the agent, for a static
	// token; for an OAuth token, the agent and a digest of the token's
	// issuer and subject, so that another subject mapped to the same agent
	// can't take the session up.
	owner string
	// attrs go into the audit record of each call the caller's request
	// carries: an OAuth token's issuer, subject, id and client.
	attrs map[string]string
}

// errNoToken and errUnknownToken refuse a request with no bearer token,
// or with a static token no agent holds.
var (
	errNoToken      = &oauth.Error{Status: http.StatusUnauthorized, Description: "a valid bearer token is required (Authorization: Bearer <token>)"}
	errUnknownToken = &oauth.Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: "the bearer token is not valid"}
)

// SetOAuth replaces the verifier of OAuth access tokens, as a reload of
// the configuration does (nil stops admitting them): from the next
// request on, tokens are checked by v. Sessions stay their callers', and
// a request whose token v refuses is refused. It is safe to call while
// the Gateway serves.
func (g *Gateway) SetOAuth(v *oauth.Verifier) {
	g.setOAuth.Store(&oauthVerifier{v})
}

// oauth returns the verifier in force: OAuth, until SetOAuth is called.
func (g *Gateway) oauth() *oauth.Verifier {
	if set := g.setOAuth.Load(); set != nil {
		return set.v
	}
	return g.OAuth
}

// authenticate returns who the request's token says the caller is: an
// agent's static token, compared in constant time with every credential
// so that timing reveals nothing, or, with OAuth, an access token that
// verifier accepts.
func (g *Gateway) authenticate(r *http.Request, verifier *oauth.Verifier) (caller, *oauth.Error) {
	token, ok := bearer.Token(r)
	if !ok {
		return caller{}, errNoToken
	}
	sum := sha256.Sum256([]byte(token))
	agent, found := "", 0
	agents := g.Agents
	if set := g.setAgents.Load(); set != nil {
		agents = *set
	}
	for _, c := range agents {
		if subtle.ConstantTimeCompare(sum[:], c.TokenSHA256[:]) == 1 {
			agent, found = c.Agent, found+1
		}
	}
	switch {
	case found == 1:
		return caller{agent: agent, owner: agent}, nil
	case found == 0 && verifier != nil:
		// Not an agent's static token (whatever its form): an access token.
		return oauthCaller(r.Context(), verifier, token, sum)
	}
	return caller{}, errUnknownToken
}

// oauthCaller verifies an OAuth access token.
func oauthCaller(ctx context.Context, verifier *oauth.Verifier, token string, sum [32]byte) (caller, *oauth.Error) {
	id, err := verifier.VerifyDigest(ctx, token, sum)
	if err != nil {
		e, ok := errors.AsType[*oauth.Error](err)
		if !ok {
			e = &oauth.Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: err.Error()}
		}
		return caller{}, e
	}
	// The client too: a token may have no "sub" (a machine client's, at
	// some issuers), and two clients mapped to one agent are two callers.
	principal := sha256.Sum256([]byte(id.Issuer + "\x00" + id.Subject + "\x00" + id.ClientID))
	attrs := map[string]string{"oauth_issuer": id.Issuer, "oauth_subject": id.Subject}
	if id.TokenID != "" {
		attrs["oauth_token_id"] = id.TokenID
	}
	if id.ClientID != "" {
		attrs["oauth_client_id"] = id.ClientID
	}
	return caller{agent: id.Agent, owner: id.Agent + " oauth:" + hex.EncodeToString(principal[:]), attrs: attrs}, nil
}

// refuseCaller answers a request whose token was refused. A peer that
// presented no valid token gets nothing more from this connection: no
// keep-alive for it to hold. A genuine token refused — of a subject no
// agent is configured for, or short of a scope — is a decision about
// someone the issuer vouches for, and is recorded; a forged or garbled
// one is not, or anyone could fill the log.
func (g *Gateway) refuseCaller(w http.ResponseWriter, r *http.Request, verifier *oauth.Verifier, e *oauth.Error) {
	g.observeAuthRefused(refusalReason(e))
	if e.Identity != nil && g.refusals.first(e.Identity) {
		rec := audit.Record{Event: EventAuthRefused, Agent: e.Identity.Agent, Outcome: audit.OutcomeDenied,
			Reason: e.Description, Attrs: map[string]string{"oauth_issuer": e.Identity.Issuer, "oauth_subject": e.Identity.Subject}}
		if e.Identity.TokenID != "" {
			rec.Attrs["oauth_token_id"] = e.Identity.TokenID
		}
		if _, err := g.Stack.Audit.Log(r.Context(), rec); err != nil {
			g.Log.Error("agentsec: recording a refused token", "err", err)
		}
	}
	if e.Status == http.StatusUnauthorized {
		closeAfterReply(w)
	}
	if e.Cause != nil && !errors.Is(e.Cause, context.Canceled) && !errors.Is(e.Cause, context.DeadlineExceeded) {
		g.logIssuerDown(e) // not a client that hung up while waiting
	}
	switch {
	case verifier != nil && e.Status != http.StatusServiceUnavailable:
		w.Header().Set("WWW-Authenticate", verifier.Challenge(e))
	case e.Status == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="agentsec"`)
	case e.Status == http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "10")
	}
	http.Error(w, "agentsec: "+e.Description, e.Status)
}

// issuerDownLogEvery is how often a failure to reach an OAuth issuer is
// logged while it lasts.
const issuerDownLogEvery = 10 * time.Second

// issuerDownEpoch is the origin of issuerDownLogged's times.
var issuerDownEpoch = time.Now()

// logIssuerDown logs why an issuer could not be reached — the cause the
// client is not told, as it may name hosts inside the operator's
// network — at most once per issuer and issuerDownLogEvery.
func (g *Gateway) logIssuerDown(e *oauth.Error) {
	slot, ok := g.issuerDownLogged.Load(e.Issuer)
	if !ok {
		slot, _ = g.issuerDownLogged.LoadOrStore(e.Issuer, new(atomic.Int64))
	}
	logged := slot.(*atomic.Int64)
	// On the monotonic clock, so that a step of the wall clock cannot
	// silence it, and offset so that the first failure is logged.
	now := int64(time.Since(issuerDownEpoch) + issuerDownLogEvery)
	last := logged.Load()
	if now-last < int64(issuerDownLogEvery) || !logged.CompareAndSwap(last, now) {
		return
	}
	g.Log.Warn("agentsec: an OAuth issuer could not be reached; its tokens are refused with 503", "issuer", e.Issuer, "why", e.Description, "err", e.Cause)
}

// refusalReason classifies a refused caller for an AuthObserver.
func refusalReason(e *oauth.Error) string {
	switch {
	case e == errNoToken:
		return AuthRefusedNoToken
	case e.Status == http.StatusServiceUnavailable:
		return AuthRefusedKeysUnavailable
	case e.Code == "insufficient_scope":
		return AuthRefusedInsufficientScope
	case e.Status == http.StatusForbidden:
		return AuthRefusedNoAgent
	}
	return AuthRefusedInvalidToken
}

// deleteSession ends the client's session: here, at once, so that its
// place is free when DELETE returns, and in the SessionStore, so that no
// replica serves it again. A replica that doesn't hold the session only
// checks it is the agent's before deleting it from the store: there is
// nothing of it here to start or end.
func (g *Gateway) deleteSession(w http.ResponseWriter, r *http.Request, c caller) {
	id := r.Header.Get(sessionHeader)
	if id == "" {
		http.Error(w, "agentsec: DELETE needs an Mcp-Session-Id", http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	s := g.sessions[id]
	g.mu.Unlock()
	var found bool
	var owner string
	switch {
	case s != nil:
		found, owner = true, s.owner
		if owner == c.owner {
			g.endSession(id)
		}
	case g.Sessions != nil:
		var err error
		owner, _, found, err = g.Sessions.LoadSession(r.Context(), id, g.IdleTimeout)
		if err != nil {
			g.Log.Error("agentsec: loading a session of another replica", "session", id, "err", err)
			http.Error(w, "agentsec: "+errStoreDown.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	if found && owner != c.owner {
		g.recordNotOwner(r.Context(), id, c, owner)
	}
	if !found || owner != c.owner {
		http.Error(w, "agentsec: unknown MCP session; start a new one with initialize", http.StatusNotFound)
		return
	}
	if g.Sessions != nil {
		if err := g.Sessions.DeleteSession(r.Context(), id); err != nil {
			g.Log.Error("agentsec: forgetting a session for the other replicas", "session", id, "err", err)
			http.Error(w, "agentsec: the session ended here, but the other replicas could not be told; try again", http.StatusServiceUnavailable)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// startSession starts serving a session: a new one, whose client is
// about to initialize it, or, with init, one another replica began.
func (g *Gateway) startSession(id string, c caller, init json.RawMessage) (*httpSession, error) {
	agent := c.agent
	ctx, cancel := context.WithCancel(context.Background())
	s := &httpSession{id: id, agent: agent, owner: c.owner, cancel: cancel,
		closed:  make(chan struct{}),
		streams: map[jsonrpc.ID]*stream{}, byToken: map[string]*stream{}, lastActive: time.Now()}
	g.mu.Lock()
	switch {
	case g.sessions[id] != nil:
		// Another request took the same session up meanwhile (its owner
		// is this one: takeUp checked the store's).
		other := g.sessions[id]
		g.mu.Unlock()
		cancel()
		return other, nil
	case g.closed:
		g.mu.Unlock()
		cancel()
		return nil, errors.New("the gateway is shutting down")
	case len(g.sessions) >= g.MaxSessions:
		g.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("the gateway has %d sessions open, its limit; end one (DELETE) or try later", g.MaxSessions)
	case g.perAgent[agent] >= g.MaxSessionsPerAgent:
		g.mu.Unlock()
		cancel()
		return nil, &agentSessionsError{agent: agent, limit: g.MaxSessionsPerAgent}
	}
	g.sessions[s.id] = s
	g.perAgent[agent]++
	// Counted under the lock Close takes, so Close waits for it.
	g.running.Add(1)
	g.mu.Unlock()
	p := &Proxy{Stack: g.Stack, Agent: agent, Session: s.id, Upstreams: g.Upstreams, Tokens: g.Tokens, Log: g.Log,
		AllowUnlistedTools: g.AllowUnlistedTools, Observer: g.Observer, onInitialized: g.saveSession(s, c.owner),
		Attrs:    c.attrs,
		onListed: g.listed.add}
	r, err := p.router(ctx, s)
	if err != nil {
		g.endSession(s.id)
		g.running.Done()
		return nil, err
	}
	if init != nil {
		s.saved.Store(true) // found in the store
		r.adopt(init)       // the client initialized the session with another replica
	}
	go func() {
		defer g.running.Done()
		if err := r.serve(); err != nil {
			g.Log.Warn("agentsec: session ended", "session", s.id, "agent", agent, "err", err)
		}
		g.endSession(s.id)
		g.forgetBudget(s.id)
	}()
	return s, nil
}

// An agentSessionsError refuses an agent a session past its limit.
type agentSessionsError struct {
	agent string
	limit int
}

func (e *agentSessionsError) Error() string {
	return fmt.Sprintf("agent %q holds %d sessions, the most one agent may; end one (DELETE) or let idle ones end", e.agent, e.limit)
}

// sessionRefusalStatus is the HTTP status of a session that can't start:
// 429 for an agent at its own limit, 503 otherwise.
func sessionRefusalStatus(err error) int {
	if _, ok := errors.AsType[*agentSessionsError](err); ok {
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

// forgetBudget deletes an ended session's budget: its calls are over
// (serve returned once they were), and its id is never used again. With
// a SessionStore the replicas may still hold the session for a moment,
// and the store forgets the budget once none can charge it.
func (g *Gateway) forgetBudget(id string) {
	if g.Sessions != nil {
		return
	}
	if err := g.Stack.Budget.Forget(context.Background(), id); err != nil {
		g.Log.Warn("agentsec: forgetting an ended session's budget", "session", id, "err", err)
	}
}

func (g *Gateway) endSession(id string) {
	g.mu.Lock()
	s := g.sessions[id]
	delete(g.sessions, id)
	if s != nil {
		if g.perAgent[s.agent]--; g.perAgent[s.agent] <= 0 {
			delete(g.perAgent, s.agent)
		}
	}
	g.mu.Unlock()
	if s != nil {
		s.Close()
		s.cancel()
	}
}

// reapIdle ends the sessions nothing has touched for IdleTimeout and,
// with a SessionStore, refreshes the others there.
func (g *Gateway) reapIdle() {
	tick := time.NewTicker(g.refreshEvery())
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-g.stop:
			return
		case <-tick.C:
		}
		sinceLast := time.Since(last)
		last = time.Now()
		var idle, held, used []string
		g.mu.Lock()
		for id, s := range g.sessions {
			switch d := s.idleFor(); {
			case d > g.IdleTimeout:
				idle = append(idle, id)
			case !s.saved.Load():
				// Not in the store yet (its initialize is under way):
				// the store would call it gone.
			case d <= sinceLast: // used since the last refresh, or busy now
				used = append(used, id)
				held = append(held, id)
			default:
				held = append(held, id)
			}
		}
		g.mu.Unlock()
		for _, id := range idle {
			g.Log.Info("agentsec: ending idle session", "session", id)
			g.endSession(id)
		}
		g.refreshShared(held, used)
		if g.Sessions != nil {
			// Sessions idle on every replica: their rows go too.
			if err := g.Sessions.PruneSessions(context.Background(), g.IdleTimeout); err != nil {
				g.Log.Warn("agentsec: pruning idle sessions from the session store", "err", err)
			}
		}
	}
}

// Close ends every session and refuses new ones. It returns once every
// session's upstream connections are closed — a stdio server's process
// has exited, or been killed a couple of seconds after its stdin closed —
// so that nothing the gateway started outlives it.
func (g *Gateway) Close() error {
	g.init()
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.stop)
	}
	ids := make([]string, 0, len(g.sessions))
	for id := range g.sessions {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		g.endSession(id)
	}
	g.running.Wait()
	return nil
}

// acceptsJSON reports whether the client takes a plain JSON answer.
func acceptsJSON(r *http.Request) bool {
	return accepts(r, "application/json")
}

func acceptsEventStream(r *http.Request) bool {
	return accepts(r, "text/event-stream")
}

func accepts(r *http.Request, want string) bool {
	values := r.Header.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			if t := mediaType(strings.TrimSpace(part)); t == want || t == "*/*" {
				return true
			}
		}
	}
	return false
}

// mediaType is the media type of a Content-Type or Accept value, in lower
// case without parameters, as mime.ParseMediaType gives it; "" if v is
// malformed. The two types MCP uses, written plainly, are taken as they
// are: parsing makes a map for the parameters they don't have.
func mediaType(v string) string {
	switch v {
	case "application/json", "text/event-stream":
		return v
	}
	t, _, _ := mime.ParseMediaType(v)
	return t
}

// localRequest reports whether the request is addressed to a loopback
// host and, if it has an Origin, comes from one.
func localRequest(r *http.Request) bool {
	if !loopbackHost(r.Host) {
		return false
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !loopbackHost(u.Host) {
			return false
		}
	}
	return true
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// progressToken is a request's _meta.progressToken, JSON-encoded, or "".
func progressToken(params json.RawMessage) string {
	if !bytes.Contains(params, []byte(`"progressToken"`)) {
		return ""
	}
	return string(object(object(params)["_meta"])["progressToken"])
}
