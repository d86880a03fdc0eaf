package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec/internal/syncbuf"
)

// leafCommands is every command that runs, by the words that name it.
var leafCommands = [][]string{
	{"demo"}, {"keygen"}, {"config", "check"}, {"migrate"}, {"proxy"}, {"serve"}, {"token"}, {"version"},
	{"audit", "verify"}, {"audit", "query"}, {"audit", "export"}, {"audit", "checkpoint"},
	{"audit", "prove"}, {"audit", "check-proof"},
}

// Help asked for goes to stdout and exits 0, for every command and group,
// however it is asked for; a command without flags prints no "Flags:".
func TestHelpAskedFor(t *testing.T) {
	type asked struct {
		args []string
		want string // the start of stdout
	}
	var cases []asked
	for _, h := range [][]string{{"help"}, {"-h"}, {"-help"}, {"--help"}} {
		cases = append(cases, asked{h, "agentsec is the security stack"})
	}
	for _, g := range []string{"audit", "config"} {
		for _, args := range [][]string{{g, "help"}, {g, "-h"}, {"help", g}} {
			cases = append(cases, asked{args, "agentsec " + g + " "})
		}
	}
	for _, c := range leafCommands {
		usage := "usage: agentsec " + strings.Join(c, " ")
		cases = append(cases,
			asked{append(c[:len(c):len(c)], "-h"), usage},
			asked{append(c[:len(c):len(c)], "--help"), usage},
			asked{append([]string{"help"}, c...), usage})
	}
	for _, tt := range cases {
		code, stdout, stderr := runExit(t, &Main{}, tt.args...)
		if code != 0 || !strings.HasPrefix(stdout, tt.want) || stderr != "" {
			t.Errorf("agentsec %q: exit %d, stdout %q, stderr %q; want 0, stdout starting %q and no stderr",
				tt.args, code, stdout, stderr, tt.want)
		}
	}
	for _, c := range leafCommands {
		_, stdout, _ := runExit(t, &Main{}, append(c[:len(c):len(c)], "-h")...)
		noFlags := c[0] == "token" || c[0] == "version" || c[0] == "config"
		if strings.Contains(stdout, "Flags:") == noFlags {
			t.Errorf("agentsec %s -h:\n%s\nwant a Flags: section only when the command has flags", strings.Join(c, " "), stdout)
		}
	}
}

// A command line that does not parse exits 2: with the usage on stderr
// when the command is missing, otherwise with one line saying what is
// wrong and how to get help.
func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // the start of stderr
	}{
		{nil, "agentsec is the security stack"},
		{[]string{"audit"}, "agentsec audit reads"},
		{[]string{"config"}, "agentsec config checks"},
		{[]string{"frob"}, `agentsec: unknown command "frob"; run 'agentsec help' for the list` + "\n"},
		{[]string{"help", "frob"}, `agentsec: unknown command "frob"; run 'agentsec help' for the list` + "\n"},
		{[]string{"audit", "frob"}, `agentsec: unknown command "audit frob"; run 'agentsec audit help' for the list` + "\n"},
		{[]string{"config", "frob"}, `agentsec: unknown command "config frob"; run 'agentsec config help' for the list` + "\n"},
		{[]string{"version", "extra"}, `agentsec: version: unexpected argument "extra"; flags come before arguments` + "\n"},
		{[]string{"token", "-n", "3"}, "agentsec: token: flag provided but not defined: -n; run 'agentsec token -h' for usage\n"},
		{[]string{"demo", "-calls", "many"}, `agentsec: demo: invalid value "many" for flag -calls: parse error` + "\n"},
		{[]string{"audit", "query", "-format", "xml"}, `agentsec: audit query: invalid value "xml" for flag -format: use table or jsonl` + "\n"},
	} {
		code, stdout, stderr := runExit(t, &Main{}, tt.args...)
		if code != 2 || stdout != "" || !strings.HasPrefix(stderr, tt.want) {
			t.Errorf("agentsec %q: exit %d, stdout %q, stderr %q; want 2, no stdout and stderr starting %q",
				tt.args, code, stdout, stderr, tt.want)
		}
	}
	for _, c := range leafCommands {
		args := append(c[:len(c):len(c)], "-bogus")
		name := strings.Join(c, " ")
		want := "agentsec: " + name + ": flag provided but not defined: -bogus; run 'agentsec " + name + " -h' for usage\n"
		if code, stdout, stderr := runExit(t, &Main{}, args...); code != 2 || stdout != "" || stderr != want {
			t.Errorf("agentsec %q: exit %d, stdout %q, stderr %q; want 2 and %q", args, code, stdout, stderr, want)
		}
	}
}

// Errors past the command line exit 1, a missing required flag among
// them: the message names it.
func TestOtherErrorsExit1(t *testing.T) {
	for _, args := range [][]string{
		{"keygen"},
		{"config", "check"},
		{"audit", "verify"},
		{"audit", "prove", "-db", "x.db"},
		{"config", "check", "no-such-file.yaml"},
	} {
		if code, _, stderr := runExit(t, &Main{}, args...); code != 1 || strings.Count(stderr, "\n") != 1 {
			t.Errorf("agentsec %q: exit %d, stderr %q; want 1 and one line", args, code, stderr)
		}
	}
}

// An error message cannot act on the terminal, whatever it quotes.
func TestExitCodeEscapesMessage(t *testing.T) {
	var stderr strings.Builder
	m := &Main{Stderr: &stderr}
	m.ExitCode(errors.New("tool \x1b]0;pwned\x07 is \u202eevil\r\nforged line"))
	want := `agentsec: tool \u001b]0;pwned\u0007 is \u202eevil forged line` + "\n"
	if stderr.String() != want {
		t.Errorf("ExitCode wrote %q, want %q", stderr.String(), want)
	}
}

// The drain is bounded: if the command does not return within the limit
// after the first signal, the process exits 1 at once, saying why.
func TestStopOnSignalLimit(t *testing.T) {
	var stderr syncbuf.Buffer
	m := &Main{Stderr: &stderr}
	sigs := make(chan os.Signal, 2)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	exited := make(chan int, 1)
	go m.stopOnSignal(sigs, cancel, 50*time.Millisecond, func(code int) { exited <- code })
	sigs <- syscall.SIGTERM
	<-ctx.Done()
	if got := context.Cause(ctx).Error(); got != "stopped by SIGTERM" {
		t.Errorf("the cause of the cancellation is %q, want %q", got, "stopped by SIGTERM")
	}
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after the limit")
	}
	if want := "agentsec: still shutting down 50ms after SIGTERM: exiting at once; the last checkpoint may be unsigned\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}
