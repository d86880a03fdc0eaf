// Command agentsec is the agentsec binary.
//
// Usage:
//
//	agentsec demo       run the library's main flow and print its audit log
//	agentsec version    print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "devel"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	m := &Main{Stdout: os.Stdout, Stderr: os.Stderr}
	err := m.Run(ctx, os.Args[1:])
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "agentsec: %v\n", err)
		os.Exit(1)
	}
}

// Main runs agentsec's commands; it is main without the process, so tests
// can run commands in-process.
type Main struct {
	Stdout io.Writer
	Stderr io.Writer
}

const usage = `agentsec is the security stack for AI agents.

Usage:

	agentsec <command> [arguments]

Commands:

	demo       run an allowed call, a trust denial and budget exhaustion,
	           then print and verify the audit log
	version    print the version
	help       print this help
`

// Run runs the command named by args[0]. It returns flag.ErrHelp after
// printing usage for a missing command or for help.
func (m *Main) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return flag.ErrHelp
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "demo":
		return m.runDemo(ctx, args)
	case "version":
		fmt.Fprintln(m.Stdout, "agentsec", version)
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q; run 'agentsec help' for the list", cmd)
}
