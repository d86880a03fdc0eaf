package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/mcpgate"
)

// runProxy serves one MCP client over stdio — what desktop clients launch
// — in front of the configured upstream, governing its tool calls as the
// configuration's stdio_agent.
func (m *Main) runProxy(ctx context.Context, args []string) error {
	cfg, _, stack, err := m.openGateway("proxy",
		"Serves one MCP client on stdin and stdout, in front of the upstream MCP server the\n"+
			"configuration names, applying the trust gate, the budget and the audit log to every\n"+
			"tool call as the configuration's stdio_agent.\n", args,
		func(cfg *config.Config, file string) error {
			if cfg.StdioAgent == "" {
				return fmt.Errorf("%s: proxy needs stdio_agent, the agent the stdio client acts as", file)
			}
			return nil
		})
	if err != nil {
		return err
	}
	defer stack.Close()

	upstream := upstreamTransport(cfg.Upstreams[0])
	up, err := upstream.Connect(ctx)
	if err != nil {
		return fmt.Errorf("starting upstream %q: %w", cfg.Upstreams[0].Name, err)
	}
	stdin := m.Stdin
	if stdin == nil {
		stdin = os.Stdin
	}
	down, err := (&mcp.IOTransport{Reader: io.NopCloser(stdin), Writer: nopWriteCloser{m.Stdout}}).Connect(ctx)
	if err != nil {
		up.Close()
		return err
	}
	proxy := &mcpgate.Proxy{Stack: stack, Agent: cfg.StdioAgent}
	if err := proxy.Serve(ctx, down, up); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("proxy: %w", err)
	}
	return nil
}

// openGateway reads the -config flag of the gateway command cmd, loads
// the file, checks what every gateway needs — one upstream, a durable
// audit log — and what check adds, and builds the stack.
func (m *Main) openGateway(cmd, about string, args []string, check func(*config.Config, string) error) (*config.Config, string, *agentsec.Stack, error) {
	fs := newFlagSet(cmd, "-config FILE", about)
	file := fs.String("config", "agentsec.yaml", "the configuration `file`")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return nil, "", nil, err
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return nil, "", nil, err
	}
	if err := check(cfg, *file); err != nil {
		return nil, "", nil, err
	}
	switch {
	case len(cfg.Upstreams) != 1:
		return nil, "", nil, fmt.Errorf("%s: %s fronts exactly one upstream for now; the file names %d", *file, cmd, len(cfg.Upstreams))
	case cfg.Audit.Path == "":
		return nil, "", nil, fmt.Errorf("%s: %s keeps its audit log on disk: set audit.path and audit.key_file", *file, cmd)
	}
	sc, err := cfg.StackConfig()
	if err != nil {
		return nil, "", nil, err
	}
	stack, err := agentsec.New(sc)
	if err != nil {
		return nil, "", nil, err
	}
	return cfg, *file, stack, nil
}

// upstreamTransport returns the transport to an upstream server.
func upstreamTransport(u config.Upstream) mcp.Transport {
	if u.URL != "" {
		return &mcp.StreamableClientTransport{Endpoint: u.URL}
	}
	cmd := exec.Command(u.Command, u.Args...)
	cmd.Env = os.Environ()
	for k, v := range u.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stderr = os.Stderr // the server's own diagnostics
	return &mcp.CommandTransport{Command: cmd}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
