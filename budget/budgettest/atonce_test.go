package budgettest_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/budget/budgettest"
)

func TestAtOnce(t *testing.T) {
	t.Run("calls overlap", func(t *testing.T) {
		// Each call waits for all n to have begun, which only happens if
		// they run at the same time.
		const n = 50
		var begun atomic.Int64
		all := make(chan struct{})
		errs := budgettest.AtOnce(n, func() error {
			if begun.Add(1) == n {
				close(all)
			}
			select {
			case <-all:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("calls did not overlap")
			}
		})
		if len(errs) != 0 {
			t.Errorf("AtOnce = %v, want no errors", errs)
		}
	})

	t.Run("returns the errors", func(t *testing.T) {
		const n = 10
		errOdd := errors.New("odd call")
		var calls atomic.Int64
		errs := budgettest.AtOnce(n, func() error {
			if calls.Add(1)%2 == 1 {
				return errOdd
			}
			return nil
		})
		if got := calls.Load(); got != n {
			t.Errorf("fn called %d times, want %d", got, n)
		}
		if len(errs) != n/2 {
			t.Fatalf("AtOnce returned %d errors, want %d", len(errs), n/2)
		}
		for _, err := range errs {
			if !errors.Is(err, errOdd) {
				t.Errorf("AtOnce returned %v, want %v", err, errOdd)
			}
		}
	})

	t.Run("none", func(t *testing.T) {
		errs := budgettest.AtOnce(0, func() error {
			t.Error("fn called with n = 0")
			return nil
		})
		if len(errs) != 0 {
			t.Errorf("AtOnce(0) = %v, want no errors", errs)
		}
	})
}

// Ten callers race for a session's three call slots; exactly three win.
func ExampleAtOnce() {
	ctx := context.Background()
	enf, err := budget.NewEnforcer(budget.NewMemoryStore(), budget.Limits{Tokens: 1000, Calls: 3})
	if err != nil {
		panic(err)
	}
	errs := budgettest.AtOnce(10, func() error {
		_, err := enf.Reserve(ctx, "agent-1")
		return err
	})
	refused := 0
	for _, err := range errs {
		if errors.Is(err, budget.ErrExceeded) {
			refused++
		}
	}
	fmt.Printf("%d reserved, %d refused\n", 10-len(errs), refused)
	// Output: 3 reserved, 7 refused
}
