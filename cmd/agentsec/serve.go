package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/mcpgate"
)

// runServe serves the decision API and, in front of the configured
// upstreams, MCP clients over streamable HTTP.
func (m *Main) runServe(ctx context.Context, args []string) error {
	// SIGHUP's default is to end the process: take it from the start.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var (
		gw             *mcpgate.Gateway
		api            *httpapi.Server
		addrFile       string
		stopOnStdinEOF bool
		configFile     string
	)
	g, err := m.openGateway("serve",
		"Serves the decision API (/v1/, docs/api.md) and, in front of the upstream MCP servers\n"+
			"the configuration names, MCP clients over streamable HTTP, on the configuration's\n"+
			"listen address. Each client authenticates with an agent's or an operator's bearer\n"+
			"token (agentsec token); each MCP session is a budget session. With no upstreams it\n"+
			"serves the decision API alone.\n", args,
		func(cfg *config.Config, file string) (err error) {
			configFile = file
			if api, err = apiFor(cfg, file); err != nil {
				return err
			}
			if len(cfg.Upstreams) > 0 {
				gw, err = gatewayFor(cfg, file, api.Agents)
			}
			return err
		},
		func(fs *flag.FlagSet) {
			fs.StringVar(&addrFile, "addr-file", "", "once listening, write the listen address (host:port) to this `file`;\nwith listen port 0, it says which port was chosen")
			fs.BoolVar(&stopOnStdinEOF, "stop-on-stdin-eof", false, "stop, as on SIGTERM, when standard input ends: for a parent process\nthat starts agentsec and holds its stdin open while it needs it")
		})
	if err != nil {
		return err
	}
	defer g.Close()
	cfg := g.cfg
	logger := slog.New(slog.NewTextHandler(m.Stderr, nil))
	api.Stack, api.Log = g.stack, logger
	var handler http.Handler = api
	if gw != nil {
		gw.Stack = g.stack
		if g.sessions != nil {
			gw.Sessions = g.sessions
		}
		gw.Upstreams = upstreams(cfg, m.Stderr)
		gw.Log = logger
		if gw.OAuth != nil {
			// The issuers' keys are fetched now, so the first agent does
			// not wait for them; an issuer that is down has its tokens
			// refused (503), and each try fetches again.
			go func() {
				if err := gw.OAuth.Prefetch(ctx); err != nil {
					logger.Warn("agentsec: OAuth signing keys can't be had yet; the issuer's tokens are refused until they can", "err", err)
				}
			}()
		}
		if g.metrics != nil {
			g.metrics.WatchGateway(gw)
		}
		// Close waits for the sessions' upstream servers to exit, before
		// the stack signs its last checkpoint.
		defer gw.Close()
		handler = agentsListener(api, gw)
	} else {
		handler = agentsListener(api, nil)
	}
	if stopOnStdinEOF {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stdin := m.Stdin
		if stdin == nil {
			stdin = os.Stdin
		}
		go func() {
			io.Copy(io.Discard, stdin)
			cancel()
		}()
	}

	// SIGHUP reloads the configuration, as an admin's POST /reload does;
	// one that came while starting waits in hup.
	reload := newReloader(ctx, configFile, cfg, g.stack, api, gw, logger)
	hupCtx, stopHup := context.WithCancel(ctx)
	defer stopHup()
	go func() {
		for {
			select {
			case <-hup:
				reload.onSignal(hupCtx)
			case <-hupCtx.Done():
				return
			}
		}
	}()

	tcp, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	ln, err := mcpgate.LimitListener(tcp, mcpgate.ListenerLimits{MaxConnections: cfg.MaxConnections,
		MaxConnectionsPerAddress: cfg.MaxConnectionsPerAddress, Log: logger})
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
	// GET, as long as its session. The gateway and the API bound a
	// request's body themselves (request_body_timeout), and the listener
	// the connections.
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: headerTimeout, IdleTimeout: idle, MaxHeaderBytes: maxHeaderBytes}
	cc := console.Config{Stack: g.stack, Metrics: g.metrics, Operator: api.OperatorBySum, Reload: reload.reload, Logger: logger,
		CheckpointCopies: cfg.Path(cfg.Audit.CheckpointFile)}
	if gw != nil {
		cc.Sessions, cc.Upstreams = gw, gw
	}
	admin, err := startAdmin(cfg, cc)
	if err != nil {
		ln.Close()
		return err
	}
	if admin != nil {
		defer admin.Close()
		fmt.Fprintf(m.Stderr, "agentsec: admin endpoints on http://%s/ (console, healthz, readyz, metrics, reload)\n", admin.addr)
	}
	if gw != nil {
		names := make([]string, len(cfg.Upstreams))
		for i, u := range cfg.Upstreams {
			names[i] = u.Name
		}
		fmt.Fprintf(m.Stderr, "agentsec: serving MCP on http://%s/ in front of %s\n", ln.Addr(), strings.Join(names, ", "))
	}
	fmt.Fprintf(m.Stderr, "agentsec: serving the decision API on http://%s/v1/\n", ln.Addr())
	if addrFile != "" {
		if err := writeFileAtomically(addrFile, []byte(ln.Addr().String()+"\n")); err != nil {
			ln.Close()
			return fmt.Errorf("-addr-file: %w", err)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		api.Close()
		return err
	case <-ctx.Done():
		if gw != nil {
			gw.Close() // ends the sessions, whose open streams would hold Shutdown up
		}
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(shutdown)
		// What is still open is recorded as spent, before the log closes.
		api.Close()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}
}

// agentsListener routes the agents' listener: the decision API under
// /v1/, and MCP, if there is a gateway, everywhere else.
func agentsListener(api *httpapi.Server, gw *mcpgate.Gateway) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/", api)
	if gw != nil {
		mux.Handle("/", gw)
	} else {
		mux.Handle("/", api) // its not-found problem, naming the API
	}
	return mux
}

// writeFileAtomically writes data to a temporary file beside path, of a
// random name, and renames it there (newOutputBeside): a reader sees all
// of it or nothing, and a link planted at a name known in advance can't
// turn the write on another file.
func writeFileAtomically(path string, data []byte) error {
	o, err := newOutputBeside(path, 0o644)
	if err != nil {
		return err
	}
	defer o.discard()
	if _, err := o.Write(data); err != nil {
		return err
	}
	return o.commit()
}

// adminServer is serve's admin listener.
type adminServer struct {
	srv  *http.Server
	addr net.Addr
}

// startAdmin starts the admin listener the configuration names, if any.
func startAdmin(cfg *config.Config, cc console.Config) (*adminServer, error) {
	if cfg.Admin.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Admin.AdminAddress())
	if err != nil {
		return nil, fmt.Errorf("admin.listen: listening on %s: %w", cfg.Admin.AdminAddress(), err)
	}
	a := &adminServer{addr: ln.Addr(), srv: &http.Server{Handler: console.Handler(cc),
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

// apiFor builds the decision API a configuration describes, without its
// stack: who may call it, by their tokens' hashes.
func apiFor(cfg *config.Config, file string) (*httpapi.Server, error) {
	if cfg.Listen == "" {
		return nil, fmt.Errorf("%s: serve needs listen, such as 127.0.0.1:8080", file)
	}
	api := &httpapi.Server{BodyTimeout: cfg.RequestBodyTimeout}
	byToken := map[string]int{}
	for _, a := range cfg.Trust.Agents {
		if a.TokenSHA256 == "" {
			continue
		}
		i, seen := byToken[a.TokenSHA256]
		if !seen {
			var c httpapi.Credential
			if _, err := hex.Decode(c.TokenSHA256[:], []byte(a.TokenSHA256)); err != nil {
				return nil, fmt.Errorf("%s: agent %q: %w", file, a.ID, err)
			}
			c.Agent = a.ID
			i = len(api.Agents)
			byToken[a.TokenSHA256] = i
			api.Agents = append(api.Agents, c)
		}
		// A token acts in the scopes of the assignments that hold it.
		if !slices.Contains(api.Agents[i].Scopes, a.Scope) {
			api.Agents[i].Scopes = append(api.Agents[i].Scopes, a.Scope)
		}
	}
	for _, o := range cfg.Operators {
		op := httpapi.Operator{ID: o.ID, Admin: o.Role == config.RoleAdmin}
		if _, err := hex.Decode(op.TokenSHA256[:], []byte(o.TokenSHA256)); err != nil {
			return nil, fmt.Errorf("%s: operator %q: %w", file, o.ID, err)
		}
		api.Operators = append(api.Operators, op)
	}
	if len(api.Agents) == 0 && len(api.Operators) == 0 {
		return nil, fmt.Errorf("%s: no agent or operator has a token_sha256, so no client could connect; make one with agentsec token", file)
	}
	return api, nil
}

// gatewayFor builds the HTTP gateway a configuration describes, without
// its stack, for the agents the decision API knows by their tokens.
func gatewayFor(cfg *config.Config, file string, agents []httpapi.Credential) (*mcpgate.Gateway, error) {
	gw := &mcpgate.Gateway{MaxSessions: cfg.MaxSessions, MaxSessionsPerAgent: cfg.MaxSessionsPerAgent,
		IdleTimeout: cfg.SessionIdleTimeout, RequestBodyTimeout: cfg.RequestBodyTimeout,
		AllowUnlistedTools: cfg.AllowUnlistedTools}
	for _, a := range agents {
		gw.Agents = append(gw.Agents, mcpgate.Credential{TokenSHA256: a.TokenSHA256, Agent: a.Agent})
	}
	var err error
	if gw.OAuth, err = cfg.OAuthVerifier(); err != nil {
		return nil, fmt.Errorf("%s: auth.oauth: %w", file, err)
	}
	if len(gw.Agents) == 0 && gw.OAuth == nil {
		return nil, fmt.Errorf("%s: no agent has a token_sha256, and auth.oauth is not set, so no MCP client could connect; make a token with agentsec token", file)
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
	ip := net.ParseIP(host)
	gw.LocalOnly = host == "localhost" || (ip != nil && ip.IsLoopback())
	return gw, nil
}
