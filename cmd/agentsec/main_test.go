package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"regexp"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &errOut}
	err = m.Run(context.Background(), args)
	return out.String(), errOut.String(), err
}

func TestDemo(t *testing.T) {
	out, _, err := run(t, "demo")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^through agentsec the agent sees: read_file, web\.search\.$|the agent sees: read_file, web\.search\.$`),
		regexp.MustCompile(`(?m)^1 +read_file +allowed: notes\.txt: agents call tools; operators need guarantees$`),
		regexp.MustCompile(`(?m)^2 +shell\.exec +denied: assigned level is below the required level$`),
		regexp.MustCompile(`(?m)^5 +read_file +denied: call limit reached$`),
		regexp.MustCompile(`(?m)^Audit log \(6 records\):$`),
		regexp.MustCompile(`(?m)^1 +\S+ +tool\.call +research-bot +read_file +allow +verified/verified +[1-9][0-9]* +assigned level meets the required level$`),
		regexp.MustCompile(`(?m)^5 +\S+ +tool\.call +research-bot +read_file +deny +verified/verified +0 +call limit reached$`),
		regexp.MustCompile(`(?m)^Verified: 6 records against the Merkle tree\.$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("demo output lacks a line matching %s:\n%s", want, out)
		}
	}
}

func TestDemoCallLimitFlag(t *testing.T) {
	out, _, err := run(t, "demo", "-calls", "1")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^3 +web\.search +denied: call limit reached$`).MatchString(out) {
		t.Errorf("demo -calls 1 output:\n%s", out)
	}
}

func TestBadInvocations(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"; run 'agentsec help'`},
		{[]string{"demo", "extra"}, `demo: unexpected argument "extra"`},
		{[]string{"demo", "-calls", "0"}, "call limit must be positive"},
		{[]string{"demo", "-calls", "many"}, "invalid value"},
	}
	for _, tt := range tests {
		_, _, err := run(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("agentsec %v: error %v, want one containing %q", tt.args, err, tt.want)
		}
	}
	if _, stderr, err := run(t); !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr, "Commands:") {
		t.Errorf("agentsec with no command: err %v, stderr %q; want usage and flag.ErrHelp", err, stderr)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "version")
	if err != nil || out != "agentsec devel\n" {
		t.Errorf("version = %q, %v", out, err)
	}
}
