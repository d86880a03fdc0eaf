package audit_test

import (
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
)

func TestMemoryStore(t *testing.T) {
	audittest.Run(t, func(t *testing.T) audit.Store {
		s := audit.NewMemoryStore()
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}
