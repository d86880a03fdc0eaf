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

// The memory store refuses an entry without the number of hashes its
// position stores, which would shift every later entry's hashes.
func TestMemoryStoreChecksHashCount(t *testing.T) {
	s := audit.NewMemoryStore()
	var h hashTree
	data := []byte(`{"event":"e","time":"2025-01-02T03:04:05.000000000Z"}`)
	for seq := range uint64(3) {
		hashes := h.add(t, seq, data)
		for _, bad := range [][]audit.Hash{nil, hashes[:len(hashes)-1], append(hashes, audit.Hash{})} {
			if len(bad) == len(hashes) {
				continue
			}
			if err := s.Append(t.Context(), []audit.Entry{{Seq: seq, Data: data, Hashes: bad}}); err == nil {
				t.Fatalf("Append(entry %d with %d hashes, want %d) = nil error, want error", seq, len(bad), len(hashes))
			}
		}
		if err := s.Append(t.Context(), []audit.Entry{{Seq: seq, Data: data, Hashes: hashes}}); err != nil {
			t.Fatalf("Append(entry %d): %v", seq, err)
		}
	}
}
