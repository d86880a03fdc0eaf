package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/mcpgate"
)

// runServe serves many MCP clients over streamable HTTP in front of the
// configured upstream.
func (m *Main) runServe(ctx context.Context, args []string) error {
	var gw *mcpgate.Gateway
	g, err := m.openGateway("serve",
		"Serves MCP clients over streamable HTTP on the configuration's listen address, in front\n"+
			"of the upstream MCP server it names. Each client authenticates with an agent's bearer\n"+
			"token (agentsec token); each MCP session is a budget session.\n", args,
		func(cfg *config.Config, file string) (err error) {
			gw, err = gatewayFor(cfg, file)
			return err
		})
	if err != nil {
		return err
	}
	defer g.Close()
	cfg := g.cfg
	gw.Stack = g.stack
	if g.sessions != nil {
		gw.Sessions = g.sessions
	}
	gw.Upstreams = upstreams(cfg, m.Stderr)
	gw.Log = slog.New(slog.NewTextHandler(m.Stderr, nil))
	// Close waits for the sessions' upstream servers to exit, before the
	// stack signs its last checkpoint.
	defer gw.Close()

	tcp, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	ln, err := mcpgate.LimitListener(tcp, mcpgate.ListenerLimits{MaxConnections: cfg.MaxConnections,
		MaxConnectionsPerAddress: cfg.MaxConnectionsPerAddress, Log: gw.Log})
	if err != nil {
		tcp.Close()
		return err
	}
	idle := cfg.ConnectionIdleTimeout
	if idle == 0 {
		idle = defaultConnectionIdleTimeout
	}
	// No ReadTimeout or WriteTimeout: they would bound every response,
	// and one may be an event stream as long as a tool call, or, for a
	// GET, as long as its session. The gateway bounds a request's body
	// itself (request_body_timeout), and the listener the connections.
	srv := &http.Server{Handler: gw, ReadHeaderTimeout: headerTimeout, IdleTimeout: idle, MaxHeaderBytes: maxHeaderBytes}
	names := make([]string, len(cfg.Upstreams))
	for i, u := range cfg.Upstreams {
		names[i] = u.Name
	}
	admin, err := startAdmin(cfg, g.stack)
	if err != nil {
		ln.Close()
		return err
	}
	if admin != nil {
		defer admin.Close()
		fmt.Fprintf(m.Stderr, "agentsec: admin endpoints on http://%s/ (healthz, readyz)\n", admin.addr)
	}
	fmt.Fprintf(m.Stderr, "agentsec: serving MCP on http://%s/ in front of %s\n", ln.Addr(), strings.Join(names, ", "))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		gw.Close() // ends the sessions, whose open streams would hold Shutdown up
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}
}

// adminServer is serve's admin listener.
type adminServer struct {
	srv  *http.Server
	addr net.Addr
}

// startAdmin starts the admin listener the configuration names, if any.
func startAdmin(cfg *config.Config, stack *agentsec.Stack) (*adminServer, error) {
	if cfg.Admin.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Admin.AdminAddress())
	if err != nil {
		return nil, fmt.Errorf("admin.listen: listening on %s: %w", cfg.Admin.AdminAddress(), err)
	}
	a := &adminServer{addr: ln.Addr(), srv: &http.Server{Handler: console.Handler(stack),
		ReadHeaderTimeout: headerTimeout, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		IdleTimeout: defaultConnectionIdleTimeout, MaxHeaderBytes: maxHeaderBytes}}
	go a.srv.Serve(ln)
	return a, nil
}

// Close stops the admin listener: its probes are answered in a moment.
func (a *adminServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
}

// Bounds on serve's HTTP connections that the configuration does not set.
const (
	// headerTimeout is how long a client has to send a request's
	// headers, from the first byte, or from the connection's opening
	// for its first request.
	headerTimeout = 10 * time.Second
	// maxHeaderBytes bounds a request's headers: an MCP client's are a
	// token, a session id and a few more, and net/http's default (1 MiB)
	// is memory a client holds for nothing.
	maxHeaderBytes = 64 << 10
	// defaultConnectionIdleTimeout is connection_idle_timeout's default:
	// longer than Go's HTTP client keeps an idle connection (90s), so
	// that such a client, not the gateway, ends it — a request sent as
	// the gateway closes the connection fails, and a POST is not retried.
	defaultConnectionIdleTimeout = 2 * time.Minute
)

// gatewayFor builds the HTTP gateway a configuration describes, without
// its stack.
func gatewayFor(cfg *config.Config, file string) (*mcpgate.Gateway, error) {
	switch {
	case cfg.Listen == "":
		return nil, fmt.Errorf("%s: serve needs listen, such as 127.0.0.1:8080", file)
	}
	gw := &mcpgate.Gateway{MaxSessions: cfg.MaxSessions, MaxSessionsPerAgent: cfg.MaxSessionsPerAgent,
		IdleTimeout: cfg.SessionIdleTimeout, RequestBodyTimeout: cfg.RequestBodyTimeout,
		AllowUnlistedTools: cfg.AllowUnlistedTools}
	for _, a := range cfg.Trust.Agents {
		if a.TokenSHA256 == "" {
			continue
		}
		var c mcpgate.Credential
		if _, err := hex.Decode(c.TokenSHA256[:], []byte(a.TokenSHA256)); err != nil {
			return nil, fmt.Errorf("%s: agent %q: %w", file, a.ID, err)
		}
		c.Agent = a.ID
		gw.Agents = append(gw.Agents, c)
	}
	if len(gw.Agents) == 0 {
		return nil, fmt.Errorf("%s: no agent has a token_sha256, so no client could connect; make one with agentsec token", file)
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
	ip := net.ParseIP(host)
	gw.LocalOnly = host == "localhost" || (ip != nil && ip.IsLoopback())
	return gw, nil
}
