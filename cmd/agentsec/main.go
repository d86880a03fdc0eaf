// Command agentsec is the agentsec binary.
//
// Usage:
//
//	agentsec demo       run the library's main flow and print its audit log
//	agentsec keygen     make a key pair for signing audit checkpoints
//	agentsec audit      verify, query, export and prove a durable audit log
//	agentsec config     check an agentsec.yaml
//	agentsec migrate    create or upgrade the schema of a PostgreSQL database
//	agentsec proxy      govern one MCP client over stdio
//	agentsec serve      govern MCP clients over streamable HTTP
//	agentsec reload     have a running serve read its configuration again
//	agentsec token      make a bearer token for an agent
//	agentsec version    print the version
//
// docs/cli.md describes every command, flag, output format and exit code.
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
	"syscall"

	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "devel"

func main() { os.Exit(runMain()) }

// runMain runs the command line and returns the exit code; the testscript
// tests run it as the agentsec command.
func runMain() int {
	m := &Main{
		Stdin:          os.Stdin,
		Stdout:         os.Stdout,
		Stderr:         os.Stderr,
		StderrTerminal: term.IsTerminal(int(os.Stderr.Fd())),
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	// SIGTERM too: systemd, Docker and Kubernetes stop a process with it,
	// and dying of it would leave the last records without a checkpoint.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go m.stopOnSignal(sigs, cancel, stopTimeout, os.Exit)
	err := m.Run(ctx, os.Args[1:])
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return m.ExitCode(err)
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

// errHelpShown is what a command returns after printing the help asked
// for with -h: it stops the command, and the process exits 0.
var errHelpShown = errors.New("help shown")

// A usageError is a command line agentsec could not parse: an unknown
// command or flag, a flag value of the wrong form, an argument too many.
// The process exits 2, as after the flag package's own usage errors.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// ExitCode reports the error Run returned on Stderr, as one line, and
// returns the process's exit code: 0 for success and for help asked for,
// 2 for a usage error (usage was printed, or the error says how to get
// it), 1 for any other error.
func (m *Main) ExitCode(err error) int {
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, errHelpShown):
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	}
	msg := strings.TrimPrefix(err.Error(), "agentsec: ")
	msg = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(msg)
	// A message may quote a record, a file or a flag value: nothing in it
	// may act on the terminal.
	fmt.Fprintf(m.Stderr, "agentsec: %s\n", oneLine(msg))
	if errors.As(err, &usage) {
		return 2
	}
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
	reload     have a running serve read its configuration again
	token      make a bearer token for an agent, and its hash for the config
	version    print the version
	help       print this help

Run 'agentsec <command> -h', or 'agentsec help <command>', for a command's
flags.
`

// Run runs the command named by args[0]. After printing usage to
// Stderr for a missing command, it returns flag.ErrHelp; after printing
// the help asked for (-h, help) to Stdout, nil or errHelpShown.
func (m *Main) Run(ctx context.Context, args []string) error {
	return m.dispatch(ctx, args, "", usage, map[string]func(context.Context, []string) error{
		"demo":    m.runDemo,
		"keygen":  m.runKeygen,
		"audit":   m.runAudit,
		"config":  m.runConfig,
		"migrate": m.runMigrate,
		"proxy":   m.runProxy,
		"reload":  m.runReload,
		"serve":   m.runServe,
		"token":   m.runToken,
		"version": m.runVersion,
	})
}

func (m *Main) runVersion(_ context.Context, args []string) error {
	fs := newFlagSet("version", "", "Prints the version of agentsec.\n")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	fmt.Fprintln(m.Stdout, "agentsec", version)
	return nil
}

// dispatch runs the command of cmds that args[0] names. group is the
// words before it ("audit " for agentsec audit …), for messages. usage
// goes to Stdout for help — "help", "-h", or "help" with a command,
// which is that command's -h — and to Stderr, with flag.ErrHelp, when
// args is empty.
func (m *Main) dispatch(ctx context.Context, args []string, group, usage string, cmds map[string]func(context.Context, []string) error) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return flag.ErrHelp
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		if cmd == "help" && len(args) > 0 {
			return m.dispatch(ctx, append(args[:len(args):len(args)], "-h"), group, usage, cmds)
		}
		fmt.Fprint(m.Stdout, usage)
		return nil
	}
	if run, ok := cmds[cmd]; ok {
		return run(ctx, args)
	}
	return usagef("unknown command \"%s%s\"; run 'agentsec %shelp' for the list", group, cmd, group)
}
