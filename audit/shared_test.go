package audit_test

import (
	"testing"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
)

func TestSharedMemoryStore(t *testing.T) {
	audittest.RunShared(t, func(t *testing.T, n int) []audit.SharedStore {
		return audittest.NewSharedMemory(n)
	})
}
