package mcpgate

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
)

// A Gateway serves many MCP clients over streamable HTTP. Each client
// authenticates with a bearer token, which names its agent; each MCP
// session is proxied to a connection of its own to the upstream server,
// and its session id is its budget session.
type Gateway struct {
	Stack *agentsec.Stack
	// Agents are the agents that may connect, by the SHA-256 of their
	// bearer token.
	Agents []Credential
	// Upstreams are the servers behind the gateway; each session
	// connects to each of them.
	Upstreams []Upstream
	// MaxRequestBytes bounds a request body; 0 means 4 MiB.
	MaxRequestBytes int64
	// LocalOnly refuses requests whose Host or Origin is not a loopback
	// name or address, which stops DNS-rebinding attacks on a gateway
	// listening on loopback.
	LocalOnly bool
	// Tokens counts tool results; nil means a TiktokenCounter.
	Tokens TokenCounter
	// Log receives the gateway's own events; nil means slog.Default().
	Log *slog.Logger

	once     sync.Once
	mu       sync.Mutex
	sessions map[string]*httpSession
}

// A Credential maps a bearer token, by its SHA-256, to an agent.
type Credential struct {
	TokenSHA256 [32]byte
	Agent       string
}

type httpSession struct {
	agent     string
	transport *mcp.StreamableServerTransport
	cancel    context.CancelFunc
}

const defaultMaxRequestBytes = 4 << 20

func (g *Gateway) init() {
	g.once.Do(func() {
		g.sessions = map[string]*httpSession{}
		if g.Tokens == nil {
			g.Tokens = &TiktokenCounter{}
		}
		if g.Log == nil {
			g.Log = slog.Default()
		}
		if g.MaxRequestBytes == 0 {
			g.MaxRequestBytes = defaultMaxRequestBytes
		}
	})
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.init()
	if g.LocalOnly && !localRequest(r) {
		http.Error(w, "agentsec: this gateway only answers requests addressed to localhost", http.StatusForbidden)
		return
	}
	agent, ok := g.authenticate(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="agentsec"`)
		http.Error(w, "agentsec: a valid bearer token is required (Authorization: Bearer <token>)", http.StatusUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, g.MaxRequestBytes)

	id := r.Header.Get("Mcp-Session-Id")
	if id == "" {
		if r.Method != http.MethodPost {
			http.Error(w, "agentsec: start a session with an initialize request (POST)", http.StatusBadRequest)
			return
		}
		s, err := g.newSession(agent)
		if err != nil {
			g.Log.Error("agentsec: opening upstream", "err", err)
			http.Error(w, "agentsec: the upstream MCP server is unavailable", http.StatusBadGateway)
			return
		}
		s.transport.ServeHTTP(w, r)
		return
	}
	g.mu.Lock()
	s := g.sessions[id]
	g.mu.Unlock()
	// Another agent's session is as unknown as one that never existed.
	if s == nil || s.agent != agent {
		http.Error(w, "agentsec: unknown MCP session", http.StatusNotFound)
		return
	}
	s.transport.ServeHTTP(w, r)
	if r.Method == http.MethodDelete {
		g.endSession(id)
	}
}

// authenticate returns the agent whose token the request bears. Every
// credential is compared, in constant time, so timing reveals nothing.
func (g *Gateway) authenticate(r *http.Request) (string, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(token))
	agent, found := "", 0
	for _, c := range g.Agents {
		if subtle.ConstantTimeCompare(sum[:], c.TokenSHA256[:]) == 1 {
			agent, found = c.Agent, found+1
		}
	}
	return agent, found == 1
}

func (g *Gateway) newSession(agent string) (*httpSession, error) {
	ctx, cancel := context.WithCancel(context.Background())
	id := rand.Text()
	t := &mcp.StreamableServerTransport{SessionID: id}
	down, err := t.Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &httpSession{agent: agent, transport: t, cancel: cancel}
	g.mu.Lock()
	g.sessions[id] = s
	g.mu.Unlock()
	go func() {
		p := &Proxy{Stack: g.Stack, Agent: agent, Session: id, Upstreams: g.Upstreams, Tokens: g.Tokens, Log: g.Log}
		if err := p.Serve(ctx, down); err != nil {
			g.Log.Warn("agentsec: session ended", "session", id, "agent", agent, "err", err)
		}
		g.endSession(id)
	}()
	return s, nil
}

func (g *Gateway) endSession(id string) {
	g.mu.Lock()
	s := g.sessions[id]
	delete(g.sessions, id)
	g.mu.Unlock()
	if s != nil {
		s.cancel()
	}
}

// Close ends every session.
func (g *Gateway) Close() error {
	g.init()
	g.mu.Lock()
	ids := make([]string, 0, len(g.sessions))
	for id := range g.sessions {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		g.endSession(id)
	}
	return nil
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
