package audit_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec/audit"
)

// lostAckStore stores every batch but reports the next append as failed,
// as when a commit succeeds and its acknowledgement is lost.
type lostAckStore struct {
	audit.Store
	lose atomic.Bool
}

func (s *lostAckStore) Append(ctx context.Context, entries []audit.Entry) error {
	if err := s.Store.Append(ctx, entries); err != nil {
		return err
	}
	if s.lose.Swap(false) {
		return errors.New("connection reset after commit")
	}
	return nil
}

func TestLostAcknowledgement(t *testing.T) {
	ctx := context.Background()
	store := &lostAckStore{Store: audit.NewMemoryStore()}
	l, err := audit.NewLog(ctx, store, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Log(ctx, audit.Record{Event: "a"}); err != nil {
		t.Fatal(err)
	}
	store.lose.Store(true)
	rec, err := l.Log(ctx, audit.Record{Event: "b"})
	if err != nil || rec.Seq != 1 {
		t.Fatalf("append whose acknowledgement was lost = seq %d, %v; want seq 1 and success, since it is stored", rec.Seq, err)
	}
	if err := l.Err(); err != nil {
		t.Errorf("Err() = %v after a batch that landed", err)
	}
	if rec, err := l.Log(ctx, audit.Record{Event: "c"}); err != nil || rec.Seq != 2 {
		t.Fatalf("next append = seq %d, %v; want seq 2", rec.Seq, err)
	}
	if n, err := l.Verify(ctx); err != nil || n != 3 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}
