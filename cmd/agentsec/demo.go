package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/mcpgate"
	"github.com/agentsec/agentsec/trust"
)

// runDemo drives one agent through the main flow: allowed calls, a trust
// denial and budget exhaustion, then prints and verifies the audit log.
func (m *Main) runDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", "[-calls N] [-db FILE -key NAME.key]",
		"Runs the gateway in front of a small MCP server and drives an agent through an allowed\n"+
			"call, a trust denial and budget exhaustion, then prints and verifies the audit log.\n")
	calls := fs.Int64("calls", 3, "call limit of the demo session")
	db := fs.String("db", "", "keep the audit log in this SQLite database instead of in memory")
	keyFile := fs.String("key", "", "signer key file (from agentsec keygen) for the -db log's checkpoints")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	var auditCfg agentsec.AuditConfig
	if *db != "" {
		if *keyFile == "" {
			return errors.New("demo -db needs -key; make a key pair with: agentsec keygen -name demo")
		}
		key, err := audit.ReadSignerKeyFile(*keyFile)
		if err != nil {
			return fmt.Errorf("reading signer key: %w", err)
		}
		auditCfg = agentsec.AuditConfig{Path: *db, SignerKey: key}
	}

	began := time.Now() // the records listed are this run's: a -db log may hold others
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

	// The gateway in front of a small MCP server, and an agent using it
	// through the official SDK, all in this process.
	agent, stop, err := demoGateway(ctx, stack)
	if err != nil {
		return err
	}
	defer stop()
	listed, err := agent.ListTools(ctx, nil)
	if err != nil {
		return err
	}
	var names []string
	for _, t := range listed.Tools {
		names = append(names, t.Name)
	}
	fmt.Fprintf(out, "The MCP server offers read_file, shell.exec and web.search; through agentsec the agent sees: %s.\n\n",
		strings.Join(names, ", "))

	tools := []string{"read_file", "shell.exec", "web.search", "read_file", "read_file"}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CALL\tTOOL\tRESULT")
	for i, tool := range tools {
		res, err := agent.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"query": "agent security"}})
		if err != nil {
			return err
		}
		var text string
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				text += tc.Text
			}
		}
		verdict := "allowed: "
		if res.IsError {
			verdict = "denied: "
			text = strings.TrimPrefix(text, fmt.Sprintf("agentsec: call to tool %q denied: ", tool))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s%s\n", i+1, tool, verdict, text)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	page, err := stack.Audit.Query(ctx, audit.Filter{Namespace: "demo", Since: began, Limit: audit.MaxLimit})
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
			cell(r.Event), cell(r.Agent), cell(r.Tool), cell(string(r.Outcome)), cell(levels), r.Tokens, cell(r.Reason))
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

// demoGateway serves a small MCP server through an agentsec proxy, in
// memory, and returns a client session connected to the proxy.
func demoGateway(ctx context.Context, stack *agentsec.Stack) (*mcp.ClientSession, func(), error) {
	server := mcp.NewServer(&mcp.Implementation{Name: "demo-tools", Version: "1"}, nil)
	type args struct {
		Query string `json:"query"`
	}
	for _, tool := range []struct{ name, answer string }{
		{"read_file", "notes.txt: agents call tools; operators need guarantees"},
		{"web.search", "3 results for the query"},
		{"shell.exec", "ran the command"},
	} {
		mcp.AddTool(server, &mcp.Tool{Name: tool.name, Description: "a demo tool"},
			func(context.Context, *mcp.CallToolRequest, args) (*mcp.CallToolResult, any, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: tool.answer}}}, nil, nil
			})
	}
	proxyDown, clientSide := mcp.NewInMemoryTransports()
	ctx, cancel := context.WithCancel(ctx)
	down, err := proxyDown.Connect(ctx)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := &mcpgate.Proxy{Stack: stack, Agent: "research-bot", Session: "session-1",
			Upstreams: []mcpgate.Upstream{{Name: "demo-tools", Connect: func(ctx context.Context) (mcp.Connection, error) {
				serverSide, proxyUp := mcp.NewInMemoryTransports()
				if _, err := server.Connect(ctx, serverSide, nil); err != nil {
					return nil, err
				}
				return proxyUp.Connect(ctx)
			}}}}
		_ = p.Serve(ctx, down)
	}()
	client := mcp.NewClient(&mcp.Implementation{Name: "research-bot", Version: "1"}, nil)
	cs, err := client.Connect(ctx, clientSide, nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return cs, func() { cs.Close(); cancel(); <-done }, nil
}
