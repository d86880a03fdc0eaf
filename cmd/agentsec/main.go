// Command agentsec is the agentsec binary.
//
// Usage:
//
//	agentsec demo       run the library's main flow and print its audit log
//	agentsec keygen     make a key pair for signing audit checkpoints
//	agentsec audit      verify, query, export and prove a durable audit log
//	agentsec version    print the version
//
// docs/cli.md describes every command, flag and output format.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "devel"

func main() { os.Exit(runMain()) }

// runMain runs the command line and returns the exit code; the testscript
// tests run it as the agentsec command.
func runMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	m := &Main{
		Stdin:          os.Stdin,
		Stdout:         os.Stdout,
		Stderr:         os.Stderr,
		StderrTerminal: term.IsTerminal(int(os.Stderr.Fd())),
	}
	return m.ExitCode(m.Run(ctx, os.Args[1:]))
}

// Main runs agentsec's commands; it is main without the process, so tests
// can run commands in-process.
type Main struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// StderrTerminal says Stderr is a terminal, where long commands show
	// their progress on one line rewritten in place.
	StderrTerminal bool
}

// ExitCode reports the error Run returned on Stderr, as one line, and
// returns the process's exit code: 0 for success, 2 after usage was
// printed, 1 for any other error.
func (m *Main) ExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	}
	msg := strings.TrimPrefix(err.Error(), "agentsec: ")
	msg = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(msg)
	fmt.Fprintf(m.Stderr, "agentsec: %s\n", msg)
	return 1
}

const usage = `agentsec is the security stack for AI agents.

Usage:

	agentsec <command> [arguments]

Commands:

	demo       run the gateway in front of a small MCP server: an allowed
	           call, a trust denial and budget exhaustion, then print and
	           verify the audit log
	keygen     make a key pair for signing audit checkpoints
	audit      verify, query, export and prove a durable audit log;
	           run 'agentsec audit help' for its commands
	config     check an agentsec.yaml: agentsec config check FILE
	migrate    create or upgrade the schema of the PostgreSQL database
	           replicas share: agentsec migrate -config FILE
	proxy      serve one MCP client over stdio in front of the configured
	           MCP server, governing its tool calls
	serve      serve many MCP clients over streamable HTTP, each with an
	           agent's bearer token, in front of the configured MCP server
	token      make a bearer token for an agent, and its hash for the config
	version    print the version
	help       print this help
`

// Run runs the command named by args[0]. It returns flag.ErrHelp after
// printing usage for a missing command or for help.
func (m *Main) Run(ctx context.Context, args []string) error {
	return m.dispatch(ctx, args, "", usage, map[string]func(context.Context, []string) error{
		"demo":    m.runDemo,
		"keygen":  m.runKeygen,
		"audit":   m.runAudit,
		"config":  m.runConfig,
		"migrate": m.runMigrate,
		"proxy":   m.runProxy,
		"serve":   m.runServe,
		"token":   m.runToken,
		"version": func(context.Context, []string) error {
			fmt.Fprintln(m.Stdout, "agentsec", version)
			return nil
		},
	})
}

// dispatch runs the command of cmds that args[0] names. group is the
// words before it ("audit " for agentsec audit …), for messages; usage is
// printed for help, and to stderr with flag.ErrHelp when args is empty.
func (m *Main) dispatch(ctx context.Context, args []string, group, usage string, cmds map[string]func(context.Context, []string) error) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return flag.ErrHelp
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	}
	if run, ok := cmds[cmd]; ok {
		return run(ctx, args)
	}
	return fmt.Errorf("unknown command \"%s%s\"; run 'agentsec %shelp' for the list", group, cmd, group)
}
