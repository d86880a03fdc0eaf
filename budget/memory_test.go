package budget_test

import (
	"testing"

	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/budget/budgettest"
)

func TestMemoryStore(t *testing.T) {
	budgettest.Run(t, func(t *testing.T) budget.Store {
		s := budget.NewMemoryStore()
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}
