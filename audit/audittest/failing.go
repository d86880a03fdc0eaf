package audittest

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/agentsec/agentsec/audit"
)

// ErrInjected is the error a FailingStore's appends return.
var ErrInjected = errors.New("audittest: injected append failure")

// FailingStore wraps a Store and fails every Append while Fail is set, as
// a full or broken disk would; everything else goes to the wrapped store.
// Tests of fail-closed behaviour use it.
type FailingStore struct {
	audit.Store
	Fail atomic.Bool
}

// Append implements audit.Store.
func (s *FailingStore) Append(ctx context.Context, entries []audit.Entry) error {
	if s.Fail.Load() {
		return ErrInjected
	}
	return s.Store.Append(ctx, entries)
}
