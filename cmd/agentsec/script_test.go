package main

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary run as the agentsec command, so that the
// scripts run main's code, flag parsing and exit codes included, without
// building the binary.
func TestMain(m *testing.M) {
	if os.Getenv(echoServerEnv) != "" {
		runEchoServer() // the upstream MCP server of the proxy tests
		return
	}
	testscript.Main(m, map[string]func(){
		"agentsec": func() { os.Exit(runMain()) },
	})
}

// TestScripts runs the golden tests in testdata/script: each .txtar file
// is a script of agentsec commands and the output they must give.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
	})
}
