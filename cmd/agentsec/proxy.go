package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/console"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/store/postgres"
)

// runProxy serves one MCP client over stdio — what desktop clients launch
// — in front of the configured upstream, governing its tool calls as the
// configuration's stdio_agent.
func (m *Main) runProxy(ctx context.Context, args []string) error {
	g, err := m.openGateway("proxy",
		"Serves one MCP client on stdin and stdout, in front of the upstream MCP server the\n"+
			"configuration names, applying the trust gate, the budget and the audit log to every\n"+
			"tool call as the configuration's stdio_agent.\n", args,
		func(cfg *config.Config, file string) error {
			if len(cfg.Upstreams) == 0 {
				return fmt.Errorf("%s: proxy needs an upstream MCP server: add one under upstreams", file)
			}
			if cfg.StdioAgent == "" {
				return fmt.Errorf("%s: proxy needs stdio_agent, the agent the stdio client acts as", file)
			}
			return nil
		})
	if err != nil {
		return err
	}
	defer g.Close()
	cfg, stack := g.cfg, g.stack

	stdin := m.Stdin
	if stdin == nil {
		stdin = os.Stdin
	}
	proxy := &mcpgate.Proxy{Stack: stack, Agent: cfg.StdioAgent, Upstreams: upstreams(cfg, m.Stderr),
		Log: slog.New(slog.NewTextHandler(m.Stderr, nil)), AllowUnlistedTools: cfg.AllowUnlistedTools}
	if err := proxy.Serve(ctx, mcpgate.NewStdioConn(stdin, m.Stdout, 0)); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("proxy: %w", err)
	}
	return nil
}

// An openedGateway is what every gateway command opens: its
// configuration, its stack and, with postgres.url, the session store its
// replicas share.
type openedGateway struct {
	cfg      *config.Config
	stack    *agentsec.Stack
	sessions *postgres.SessionStore // nil without postgres.url
	metrics  *console.Metrics       // nil without admin.listen
}

func (g *openedGateway) Close() {
	g.stack.Close()
	if g.sessions != nil {
		g.sessions.Close()
	}
}

// openGateway reads the -config flag of the gateway command cmd, and the
// flags more adds, loads the file, checks what every gateway needs — a
// durable audit log — and what check adds, and builds the stack.
func (m *Main) openGateway(cmd, about string, args []string, check func(*config.Config, string) error, more ...func(*flag.FlagSet)) (*openedGateway, error) {
	synopsis := "-config FILE"
	if len(more) > 0 {
		synopsis = "-config FILE [flags]"
	}
	fs := newFlagSet(cmd, synopsis, about)
	file := fs.String("config", "agentsec.yaml", "the configuration `file`")
	for _, add := range more {
		add(fs)
	}
	if err := m.parseFlags(fs, args, 0); err != nil {
		return nil, err
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return nil, err
	}
	if err := check(cfg, *file); err != nil {
		return nil, err
	}
	if cfg.Audit.Path == "" && cfg.Postgres.URL == "" {
		return nil, fmt.Errorf("%s: %s keeps its audit log durably: set audit.path and audit.key_file, or postgres.url", *file, cmd)
	}
	// As agentsec config check does: a server that can't start is a
	// configuration problem, not a failure at the first call.
	if err := config.CheckCommands(*file, cfg); err != nil {
		return nil, err
	}
	sc, err := cfg.StackConfig()
	if err != nil {
		return nil, err
	}
	// The audit log says on stderr why it fails, and so why calls are
	// denied, and when it recovers.
	sc.Audit.Logger = slog.New(slog.NewTextHandler(m.Stderr, nil))
	g := &openedGateway{cfg: cfg}
	if cfg.Admin.Listen != "" {
		g.metrics = console.NewMetrics()
		sc.Observer = g.metrics
	}
	if cfg.Postgres.URL != "" {
		db, err := postgres.Open(context.Background(), cfg.Postgres.URL)
		if err != nil {
			return nil, fmt.Errorf("%s: postgres.url: %w", *file, err)
		}
		// The stores hold the pool; it closes with the last of them.
		sc.Budget.Store, sc.Audit.Store, g.sessions = db.Budgets(), db.Audit(), db.Sessions()
		db.Close()
	}
	if g.stack, err = agentsec.New(sc); err != nil {
		if g.sessions != nil {
			sc.Budget.Store.Close()
			sc.Audit.Store.Close()
			g.sessions.Close()
		}
		return nil, err
	}
	if g.metrics != nil {
		g.metrics.Watch(g.stack)
	}
	return g, nil
}

// upstreams returns the gateway's upstream servers. A stdio server is a
// new process for each connection; its diagnostics go to stderr.
func upstreams(cfg *config.Config, stderr io.Writer) []mcpgate.Upstream {
	var ups []mcpgate.Upstream
	for _, u := range cfg.Upstreams {
		if u.URL != "" {
			ups = append(ups, mcpgate.HTTPUpstream(u.Name, u.URL, u.Timeout))
			continue
		}
		ups = append(ups, mcpgate.Upstream{Name: u.Name, Timeout: u.Timeout,
			Connect: func(ctx context.Context) (mcp.Connection, error) {
				cmd := exec.Command(u.Command, u.Args...)
				cmd.Env = os.Environ()
				for k, v := range u.Env {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
				cmd.Stderr = stderr
				// A server that outlives its closed stdin gets a second,
				// then SIGTERM, then SIGKILL a second later: clients that
				// launched the gateway don't wait long for it to exit.
				return (&mcp.CommandTransport{Command: cmd, TerminateDuration: time.Second}).Connect(ctx)
			}})
	}
	return ups
}
