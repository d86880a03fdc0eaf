package budget_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/agentsec/agentsec/budget"
)

// A session may make two calls. Each call reserves a slot before it runs
// and commits the tokens it used; the third is refused.
func Example() {
	ctx := context.Background()
	enf, err := budget.NewEnforcer(budget.NewMemoryStore(), budget.Limits{Tokens: 1000, Calls: 2})
	if err != nil {
		panic(err)
	}
	for call := 1; call <= 3; call++ {
		r, err := enf.Reserve(ctx, "agent-1")
		if errors.Is(err, budget.ErrExceeded) {
			fmt.Printf("call %d refused: %v\n", call, err)
			break
		}
		if err != nil {
			panic(err)
		}
		// ... make the call, then record what it used.
		if err := r.Commit(ctx, 300); err != nil {
			panic(err)
		}
		st, _ := enf.Usage(ctx, "agent-1")
		left := st.Remaining()
		fmt.Printf("call %d done: %d calls and %d tokens left\n", call, left.Calls, left.Tokens)
	}
	// Output:
	// call 1 done: 1 calls and 700 tokens left
	// call 2 done: 0 calls and 400 tokens left
	// call 3 refused: budget exceeded for session "agent-1": call limit reached (calls 2/2, tokens 600/1000)
}

// A reservation for a call that did not happen is released, giving the
// slot back.
func ExampleReservation_Release() {
	ctx := context.Background()
	enf, err := budget.NewEnforcer(budget.NewMemoryStore(), budget.Limits{Tokens: 1000, Calls: 1})
	if err != nil {
		panic(err)
	}
	r, err := enf.Reserve(ctx, "agent-1")
	if err != nil {
		panic(err)
	}
	status, _ := enf.CheckBudget(ctx, "agent-1")
	fmt.Println("allowed while reserved:", status.Allowed, status.Reason)
	if err := r.Release(ctx); err != nil {
		panic(err)
	}
	status, _ = enf.CheckBudget(ctx, "agent-1")
	fmt.Println("allowed after release:", status.Allowed)
	// Output:
	// allowed while reserved: false call limit reached
	// allowed after release: true
}
