package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/pgtest"
	"github.com/agentsec/agentsec/store/postgres"
	"github.com/agentsec/agentsec/trust"
)

// Two replicas' Stacks over one database, many callers racing on a few
// sessions and half of them cancelling at random moments — before the
// call, while its reservation is queued, on its way or riding an append,
// while the tool runs: what the tools ran is within each session's call
// limit, every run is in the log as allowed and answered as allowed,
// every Guard left exactly one record, the log verifies, and each
// session's count comes to exactly the calls that ran.
func TestGuardRacesAndCancelsOnReplicas(t *testing.T) {
	const (
		replicas = 2
		callers  = 96
		calls    = 15 // per caller
		sessions = 8
		limit    = 20 // calls per session
	)
	ctx := t.Context()
	dsn := pgtest.DB(t)
	if _, _, err := postgres.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	stacks := make([]*agentsec.Stack, replicas)
	for i := range stacks {
		db, err := postgres.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		stacks[i], err = agentsec.New(agentsec.Config{
			TrustGate: agentsec.TrustGateConfig{
				ToolName: "noop", RequiredLevel: "verified",
				Agents: []trust.Assignment{{Agent: "agent", Level: "verified"}},
			},
			Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: limit, Store: db.Budgets()},
			AuditNamespace: "races",
			Audit:          agentsec.AuditConfig{Store: db.Audit()},
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	var (
		ran, answered [sessions]atomic.Int64
		guarded       atomic.Int64
		mu            sync.Mutex
		errs          []error
	)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls {
				i := rand.IntN(sessions)
				req := agentsec.Request{Agent: "agent", Session: fmt.Sprint("race-", i), Tool: "noop"}
				callCtx, cancel := context.WithCancel(ctx)
				if rand.IntN(2) == 0 {
					time.AfterFunc(time.Duration(rand.IntN(4000))*time.Microsecond, cancel)
				}
				guarded.Add(1)
				err := stacks[rand.IntN(replicas)].Guard(callCtx, req, func(ctx context.Context) (int64, error) {
					ran[i].Add(1)
					return 1, nil
				})
				cancel()
				var de *agentsec.DeniedError
				switch {
				case err == nil:
					answered[i].Add(1)
				case errors.Is(err, agentsec.ErrBudgetExceeded):
				case errors.As(err, &de) && errors.Is(de.Cause, context.Canceled),
					errors.Is(err, context.Canceled):
					// Denied because its caller gave up before it ran.
				default:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, s := range stacks {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store := db.Audit()
	defer store.Close()
	budgets := db.Budgets()
	defer budgets.Close()
	result, err := audit.Verify(ctx, store, audit.VerifyOptions{})
	if err != nil {
		t.Fatalf("the log after the races: %v", err)
	}
	var recorded, allowed [sessions]int64
	var toolCalls int64
	if err := store.Scan(ctx, 0, result.Records, func(e audit.Entry) error {
		rec, err := e.Decoded()
		if err != nil || rec.Event != agentsec.EventToolCall {
			return err
		}
		toolCalls++
		var i int
		if _, err := fmt.Sscanf(rec.Session, "race-%d", &i); err != nil {
			return err
		}
		recorded[i]++
		if rec.Outcome == audit.OutcomeAllowed {
			allowed[i]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if toolCalls != guarded.Load() {
		t.Errorf("%d tool.call records for %d Guards, want one each", toolCalls, guarded.Load())
	}
	for i := range sessions {
		session := fmt.Sprint("race-", i)
		r := ran[i].Load()
		if r > limit {
			t.Errorf("%s: the tool ran %d times, over the limit of %d", session, r, limit)
		}
		if allowed[i] != r || answered[i].Load() != r {
			t.Errorf("%s: the tool ran %d times; %d recorded as allowed, %d answered as allowed", session, r, allowed[i], answered[i].Load())
		}
		// Slots of reservations whose callers gave up on their way go
		// back once their statement is done: wait for them.
		for deadline := time.Now().Add(10 * time.Second); ; {
			st, err := budgets.Get(ctx, session)
			if err != nil {
				t.Fatal(err)
			}
			if st.Used.Calls < r {
				t.Fatalf("%s: %d calls counted for %d that ran", session, st.Used.Calls, r)
			}
			if st.Used.Calls == r {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %d calls counted 10 s after the races, %d ran", session, st.Used.Calls, r)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var perSession [sessions]int64
	for i := range ran {
		perSession[i] = ran[i].Load()
	}
	t.Logf("%d Guards, %d records; the tool ran per session %v", guarded.Load(), result.Records, perSession)
}

// An agent that names a tool with a NUL — valid JSON, "a\u0000b" — has
// its call denied and recorded like any other, and the log goes on: the
// database's text can't hold a NUL, and its append once failed, and
// every call batched with it.
func TestNULNamesAreRecorded(t *testing.T) {
	ctx := t.Context()
	db := migrated(t)
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			ToolName: "noop", RequiredLevel: "verified",
			Agents: []trust.Assignment{{Agent: "agent", Level: "verified"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 40, CallLimit: 100, Store: db.Budgets()},
		AuditNamespace: "nul",
		Audit:          agentsec.AuditConfig{Store: db.Audit()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	tool := func(context.Context) (int64, error) { return 1, nil }
	if err := stack.Guard(ctx, agentsec.Request{Agent: "agent", Session: "s", Tool: "noop\x00"}, tool); !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("a call to a tool named with a NUL: %v, want ErrTrustDenied", err)
	}
	if err := stack.Guard(ctx, agentsec.Request{Agent: "agent", Session: "s\x00", Tool: "noop"}, tool); !errors.Is(err, agentsec.ErrInvalidRequest) {
		t.Fatalf("a call on a session named with a NUL: %v, want ErrInvalidRequest", err)
	}
	if err := stack.Guard(ctx, agentsec.Request{Agent: "agent", Session: "s", Tool: "noop"}, tool); err != nil {
		t.Fatalf("the next call: %v", err)
	}
	if err := stack.Audit.Err(); err != nil {
		t.Fatalf("the log after names with a NUL: %v", err)
	}
	page, err := audit.Query(ctx, db.Audit(), audit.Filter{Tool: "noop\x00"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Tool != "noop\x00" {
		t.Errorf("Query for the tool named with a NUL = %+v, %v; want its one record", page.Records, err)
	}
}
