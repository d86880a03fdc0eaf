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

// corruptStore serves record bad with one byte changed.
type corruptStore struct {
	audit.Store
	bad uint64
}

func (s corruptStore) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	return s.Store.Scan(ctx, from, to, func(e audit.Entry) error {
		if e.Seq == s.bad {
			data := append([]byte(nil), e.Data...)
			data[len(data)-3] ^= 1
			e.Data = data
		}
		return fn(e)
	})
}

// A failed Verify still says how many records checked out before the bad one.
func TestVerifyCountsRecordsBeforeFailure(t *testing.T) {
	ctx := context.Background()
	mem := audit.NewMemoryStore()
	l, err := audit.NewLog(ctx, mem, audit.Options{Namespace: "app"})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := l.Log(ctx, audit.Record{Event: "e"}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := audit.Verify(ctx, corruptStore{mem, 6}, audit.VerifyOptions{})
	if !errors.Is(err, audit.ErrVerify) || res.Records != 6 {
		t.Fatalf("Verify = %d records, %v; want 6 and a verification error", res.Records, err)
	}
}
