package trust_test

import (
	"fmt"
	"log"

	"github.com/agentsec/agentsec/trust"
)

func Example() {
	ladder, err := trust.NewLadder("ops", "read-only", "operator", "admin")
	if err != nil {
		log.Fatal(err)
	}
	policy, err := trust.NewPolicy(ladder, []trust.Rule{
		{Tool: "metrics/*", Level: "read-only"},
		{Tool: "deploy/*", Level: "operator"},
		{Tool: "deploy/prod*", Level: "admin"}, // the stricter overlapping pattern wins
	}, "")
	if err != nil {
		log.Fatal(err)
	}
	gate, err := trust.NewGate(policy, trust.Assignment{Agent: "agent-7", Level: "operator"})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println(ladder)
	for _, tool := range []string{"metrics/cpu", "deploy/staging", "deploy/prod-eu", "shell"} {
		fmt.Println(gate.Check(trust.Request{Agent: "agent-7", Tool: tool}))
	}
	fmt.Println(gate.Check(trust.Request{Agent: "agent-9", Tool: "metrics/cpu"}))
	// Output:
	// ops: read-only < operator < admin
	// allowed: agent "agent-7" tool "metrics/cpu": assigned level meets the required level (assigned operator, required read-only)
	// allowed: agent "agent-7" tool "deploy/staging": assigned level meets the required level (assigned operator, required operator)
	// denied: agent "agent-7" tool "deploy/prod-eu": assigned level is below the required level (assigned operator, required admin)
	// denied: agent "agent-7" tool "shell": no trust rule covers the tool
	// denied: agent "agent-9" tool "metrics/cpu": agent has no assigned trust level
}

// A scoped assignment overrides the agent's unscoped one in its scope only.
func ExampleGate_Assign() {
	policy, err := trust.NewPolicy(trust.DefaultLadder(), []trust.Rule{{Tool: "db.write", Level: "privileged"}}, "")
	if err != nil {
		log.Fatal(err)
	}
	gate, err := trust.NewGate(policy, trust.Assignment{Agent: "agent-7", Level: "verified"})
	if err != nil {
		log.Fatal(err)
	}
	if err := gate.Assign(trust.Assignment{Agent: "agent-7", Scope: "incident-42", Level: "privileged"}); err != nil {
		log.Fatal(err)
	}
	for _, scope := range []string{"incident-42", "incident-43"} {
		d := gate.Check(trust.Request{Agent: "agent-7", Scope: scope, Tool: "db.write"})
		fmt.Printf("%s: allowed=%v assigned=%s\n", scope, d.Allowed, d.AssignedName())
	}
	// Output:
	// incident-42: allowed=true assigned=privileged
	// incident-43: allowed=false assigned=verified
}

func ExampleLadder_Parse() {
	_, err := trust.AumOSLadder().Parse("root")
	fmt.Println(err)
	// Output:
	// trust: unknown trust level "root" on ladder "aumos" (levels: observer < monitor < suggest < act-with-approval < act-and-report < autonomous)
}
