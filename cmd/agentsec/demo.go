package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// runDemo drives one agent through the main flow: allowed calls, a trust
// denial and budget exhaustion, then prints and verifies the audit log.
func (m *Main) runDemo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	calls := fs.Int64("calls", 3, "call limit of the demo session")
	db := fs.String("db", "", "keep the audit log in this SQLite database instead of in memory")
	keyFile := fs.String("key", "", "signer key file (from agentsec keygen) for the -db log's checkpoints")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo takes no arguments, got %q", fs.Args())
	}
	var auditCfg agentsec.AuditConfig
	if *db != "" {
		if *keyFile == "" {
			return errors.New("demo -db needs -key; make a key pair with: agentsec keygen -name demo")
		}
		key, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("reading signer key: %w", err)
		}
		auditCfg = agentsec.AuditConfig{Path: *db, SignerKey: string(key)}
	}

	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{
				{Tool: "read_file", Level: "verified"},
				{Tool: "web.*", Level: "public"},
				{Tool: "shell.exec", Level: "privileged"},
			},
			Agents: []trust.Assignment{{Agent: "research-bot", Level: "verified"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10_000, CallLimit: *calls},
		AuditNamespace: "demo",
		Audit:          auditCfg,
	})
	if err != nil {
		return err
	}
	defer stack.Close()

	out := m.Stdout
	fmt.Fprintf(out, "Agent %q holds level %q on the ladder %s.\n", "research-bot", "verified", stack.TrustGate.Ladder())
	fmt.Fprint(out, "Rules:")
	for _, r := range stack.TrustGate.Policy().Rules() {
		fmt.Fprintf(out, " %s requires %s;", r.Tool, r.Level)
	}
	fmt.Fprintf(out, " other tools are denied.\nSession %q may make %d calls and use %d tokens.\n\n",
		"session-1", *calls, 10_000)

	tools := []string{"read_file", "shell.exec", "web.search", "read_file", "read_file"}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CALL\tTOOL\tRESULT")
	for i, tool := range tools {
		req := agentsec.Request{Agent: "research-bot", Session: "session-1", Tool: tool}
		err := stack.Guard(ctx, req, func(context.Context) (int64, error) {
			return int64(100 * (i + 1)), nil // what a real tool's output would count
		})
		var result string
		denied, isDenial := errors.AsType[*agentsec.DeniedError](err)
		switch {
		case err == nil:
			result = fmt.Sprintf("allowed, %d tokens", 100*(i+1))
		case isDenial && errors.Is(err, agentsec.ErrTrustDenied):
			result = fmt.Sprintf("denied by trust gate: %s (assigned %s, required %s)",
				denied.Reason, denied.Trust.AssignedName(), denied.Trust.RequiredName())
		case isDenial && errors.Is(err, agentsec.ErrBudgetExceeded):
			result = fmt.Sprintf("denied by budget: %s (%d of %d calls used)",
				denied.Reason, denied.Budget.Used.Calls, denied.Budget.Limits.Calls)
		default:
			return err
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", i+1, tool, result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	page, err := stack.Audit.Query(ctx, audit.Filter{Limit: audit.MaxLimit})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nAudit log (%d records):\n", len(page.Records))
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tAGENT\tTOOL\tOUTCOME\tLEVELS\tTOKENS\tREASON")
	for _, r := range page.Records {
		levels := r.AssignedLevel
		if r.RequiredLevel != "" {
			levels += "/" + r.RequiredLevel
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Seq, r.Time.Format("15:04:05.000000"),
			r.Event, r.Agent, dash(r.Tool), dash(string(r.Outcome)), dash(levels), r.Tokens, r.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n, err := stack.Audit.Verify(ctx)
	if err != nil {
		return fmt.Errorf("audit log does not verify: %w", err)
	}
	fmt.Fprintf(out, "\nVerified: %d records against the Merkle tree", n)
	if *db != "" {
		if _, err := stack.Audit.Checkpoint(ctx); err != nil {
			return err
		}
		fmt.Fprintf(out, " and its signed checkpoints; the log is in %s", *db)
	}
	fmt.Fprintln(out, ".")
	return nil
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
