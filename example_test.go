package agentsec_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// The original handler's four steps, one by one: check trust, check the
// budget, execute, then record spending and audit.
func Example() {
	ctx := context.Background()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			RequiredLevel: "verified",
			ToolName:      "file-reader",
			// Levels are assigned by an operator, never computed.
			Agents: []trust.Assignment{{Agent: "agent-7", Level: "verified"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10_000, CallLimit: 100},
		AuditNamespace: "my-agent",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()

	handleToolCall := func(req agentsec.Request) (string, error) {
		// 1. Check trust.
		decision := stack.TrustGate.Check(req)
		if !decision.Allowed {
			return "", fmt.Errorf("insufficient trust: %s", decision.Reason)
		}
		// 2. Check the budget.
		status, err := stack.Budget.CheckBudget(ctx, req.Session)
		if err != nil {
			return "", err
		}
		if !status.Allowed {
			return "", fmt.Errorf("budget exceeded: %s", status.Reason)
		}
		// 3. Execute the tool.
		result, tokensUsed := "file contents", int64(42)
		// 4. Record spending and audit.
		if err := stack.Budget.RecordSpending(ctx, req.Session, tokensUsed); err != nil {
			return "", err
		}
		_, err = stack.Audit.Log(ctx, audit.Record{
			Event: agentsec.EventToolCall, Agent: req.Agent, Session: req.Session, Tool: req.Tool,
			Outcome: audit.OutcomeAllowed, Reason: decision.Reason.String(),
			RequiredLevel: decision.RequiredName(), AssignedLevel: decision.AssignedName(),
			Tokens: tokensUsed,
		})
		return result, err
	}

	out, err := handleToolCall(agentsec.Request{Agent: "agent-7", Session: "session-1", Tool: "file-reader"})
	fmt.Println(out, err)
	_, err = handleToolCall(agentsec.Request{Agent: "agent-8", Session: "session-1", Tool: "file-reader"})
	fmt.Println(err)

	page, err := stack.Audit.Query(ctx, audit.Filter{Session: "session-1"})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range page.Records {
		fmt.Println(r.Seq, r.Event, r.Agent, r.Tool, r.Outcome, r.Tokens)
	}
	// Output:
	// file contents <nil>
	// insufficient trust: agent has no assigned trust level
	// 1 tool.call agent-7 file-reader allow 42
}

// Guard runs the whole sequence in one call, atomically reserving the
// budget and recording every outcome.
func ExampleStack_Guard() {
	ctx := context.Background()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{
				{Tool: "file-reader", Level: "verified"},
				{Tool: "shell.*", Level: "privileged"},
			},
			Agents: []trust.Assignment{{Agent: "agent-7", Level: "verified"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10_000, CallLimit: 2},
		AuditNamespace: "my-agent",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()

	readFile := func(ctx context.Context) (int64, error) { return 120, nil }
	for _, tool := range []string{"file-reader", "shell.exec", "file-reader", "file-reader"} {
		req := agentsec.Request{Agent: "agent-7", Session: "s-1", Tool: tool}
		err := stack.Guard(ctx, req, readFile)
		switch {
		case err == nil:
			fmt.Println(tool, "ran")
		case errors.Is(err, agentsec.ErrTrustDenied):
			fmt.Println(tool, "trust denied:", err)
		case errors.Is(err, agentsec.ErrBudgetExceeded):
			fmt.Println(tool, "budget denied:", err)
		}
	}
	usage, _ := stack.Budget.Usage(ctx, "s-1")
	fmt.Println("used:", usage.Used.Calls, "calls,", usage.Used.Tokens, "tokens")
	// Output:
	// file-reader ran
	// shell.exec trust denied: agentsec: call to tool "shell.exec" denied: assigned level is below the required level
	// file-reader ran
	// file-reader budget denied: agentsec: call to tool "file-reader" denied: call limit reached
	// used: 2 calls, 240 tokens
}

// Guard in two halves, for a tool run elsewhere: Begin takes the trust
// check and the slot, End records what happened, once.
func ExampleStack_Begin() {
	ctx := context.Background()
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{RequiredLevel: "verified", ToolName: "file-reader",
			Agents: []trust.Assignment{{Agent: "agent-7", Level: "verified"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 10_000, CallLimit: 1},
		AuditNamespace: "my-agent",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	req := agentsec.Request{Agent: "agent-7", Session: "s1", Tool: "file-reader"}

	call, err := stack.Begin(ctx, req)
	if err != nil {
		log.Fatal(err)
	}
	// ... the tool runs, here or in another process ...
	rec, err := call.End(ctx, 42, nil)
	fmt.Println(rec.Event, rec.Outcome, rec.Tokens, err)
	_, err = call.End(ctx, 42, nil)
	fmt.Println(errors.Is(err, agentsec.ErrSettled))

	// The session's one call is spent: the next Begin is denied, and the
	// denial recorded, with the index of its record.
	_, err = stack.Begin(ctx, req)
	var de *agentsec.DeniedError
	fmt.Println(errors.As(err, &de) && errors.Is(err, agentsec.ErrBudgetExceeded), de.Logged, de.Seq == rec.Seq+1)
	// Output:
	// tool.call allow 42 <nil>
	// true
	// true true true
}
