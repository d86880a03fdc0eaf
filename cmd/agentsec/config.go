package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/agentsec/agentsec/config"
)

const configUsage = `agentsec config checks an agentsec.yaml.

Usage:

	agentsec config <command> [arguments]

Commands:

	check   validate an agentsec.yaml without starting anything

Run 'agentsec config <command> -h' for a command's flags.
`

func (m *Main) runConfig(ctx context.Context, args []string) error {
	return m.dispatch(ctx, args, "config ", configUsage, map[string]func(context.Context, []string) error{
		"check": m.runConfigCheck,
	})
}

// runConfigCheck validates a configuration file. Every problem goes to
// stderr on a line of its own; the error that follows counts them.
func (m *Main) runConfigCheck(_ context.Context, args []string) error {
	fs := newFlagSet("config check", "FILE",
		"Checks FILE as agentsec serve and agentsec proxy would at start-up: every key known,\n"+
			"every level, pattern, agent, limit, key file, address and upstream valid, and every\n"+
			"upstream command found in PATH.\n")
	if err := m.parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("config check needs the file to check: agentsec config check agentsec.yaml")
	}
	path := fs.Arg(0)
	cfg, err := config.Load(path)
	if err == nil {
		err = config.CheckCommands(path, cfg)
	}
	if err != nil {
		problems := strings.Split(err.Error(), "\n")
		if len(problems) == 1 {
			return err
		}
		for _, p := range problems {
			fmt.Fprintf(m.Stderr, "%s\n", oneLine(p))
		}
		return fmt.Errorf("%d problems in %s", len(problems), path)
	}
	audit := "in memory"
	switch {
	case cfg.Audit.Path != "":
		audit = cfg.Audit.Path + ", signed"
	case cfg.Postgres.URL != "":
		audit = "and budgets in PostgreSQL, signed"
	}
	fmt.Fprintf(m.Stdout, "%s: ok: namespace %q, %d rules, %d agents, %d upstreams, audit log %s\n",
		path, cfg.Namespace, len(cfg.Trust.Rules), len(cfg.Trust.Agents), len(cfg.Upstreams), audit)
	return nil
}

// runToken makes a bearer token for an agent and the hash that goes in
// its trust.agents entry.
func (m *Main) runToken(_ context.Context, args []string) error {
	fs := newFlagSet("token", "", "Prints a new random bearer token for an agent, and its SHA-256 for the\n"+
		"agent's token_sha256 in agentsec.yaml. Only the hash is stored.\n")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	token := "ags_" + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(token))
	fmt.Fprintf(m.Stdout, "token:        %s\ntoken_sha256: %s\n", token, hex.EncodeToString(sum[:]))
	return nil
}
