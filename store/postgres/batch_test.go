package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/internal/pgtest"
	"github.com/agentsec/agentsec/store/postgres"
)

// replicaStores returns n budget stores on one new database, each with a
// pool of its own as each replica has, and sessions "s0", "s1", … with
// limits.
func replicaStores(t *testing.T, n, sessions int, limits budget.Limits) []*postgres.BudgetStore {
	t.Helper()
	ctx := t.Context()
	dsn := pgtest.DB(t)
	if _, _, err := postgres.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	stores := make([]*postgres.BudgetStore, n)
	for i := range stores {
		db, err := postgres.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = db.Budgets()
		db.Close()
		t.Cleanup(func() { stores[i].Close() })
	}
	for s := range sessions {
		if _, err := stores[0].Create(ctx, fmt.Sprint("s", s), limits); err != nil {
			t.Fatal(err)
		}
	}
	return stores
}

// Two replicas' stores, each with many callers reserving over the same
// sessions in random order, so that their batches hold many of the same
// rows at once: every session gets exactly its limit, every other answer
// is a refusal or an unknown session, and no batch deadlocks (a deadlock
// would fail a whole batch after the server's deadlock_timeout).
func TestReserveBatchesAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	const (
		replicas = 2
		callers  = 48 // per replica
		sessions = 12
		limit    = 40
		calls    = 40 // per caller
	)
	stores := replicaStores(t, replicas, sessions, budget.Limits{Tokens: 1 << 40, Calls: limit})
	var (
		mu    sync.Mutex
		taken = map[string]int{}
		errs  []error
	)
	var wg sync.WaitGroup
	for r := range replicas {
		for range callers {
			wg.Go(func() {
				for range calls {
					// One session in sessions+1 was never created.
					session := fmt.Sprint("s", rand.IntN(sessions+1))
					st, err := stores[r].Reserve(ctx, session)
					mu.Lock()
					switch ee, exceeded := errors.AsType[*budget.ExceededError](err); {
					case err == nil:
						taken[session]++
						if st.Used.Calls < 1 || st.Used.Calls > limit {
							errs = append(errs, fmt.Errorf("%s: taken, with %d of %d calls used", session, st.Used.Calls, limit))
						}
					case exceeded:
						if ee.State.Used.Calls != limit || ee.Session != session {
							errs = append(errs, fmt.Errorf("%s: refused with %+v", session, ee))
						}
					case errors.Is(err, budget.ErrUnknownSession):
						if session != fmt.Sprint("s", sessions) {
							errs = append(errs, fmt.Errorf("%s: %w", session, err))
						}
					default:
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for s := range sessions {
		session := fmt.Sprint("s", s)
		st, err := stores[1].Get(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		if taken[session] != limit || st.Used.Calls != limit {
			t.Errorf("%s: %d reservations succeeded and %d calls are counted, want %d", session, taken[session], st.Used.Calls, limit)
		}
	}
}

// Two replicas' stores, each with many callers, reserve, commit, release
// and record over the same sessions at once, while others make changes
// that must fail — a Release with no call counted, a Commit to a session
// that doesn't exist — in the same batches: each session ends with
// exactly the calls and tokens of the changes that succeeded, and only
// the bad changes fail.
func TestChangeBatchesAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	const (
		replicas = 2
		callers  = 48 // per replica
		sessions = 12
		calls    = 40 // per caller
	)
	stores := replicaStores(t, replicas, sessions, budget.Limits{Tokens: 1 << 40, Calls: 1 << 40})
	if _, err := stores[0].Create(ctx, "idle", budget.Limits{Tokens: 100, Calls: 100}); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		want = map[string]budget.Usage{}
		errs []error
	)
	var wg sync.WaitGroup
	for r := range replicas {
		for c := range callers {
			s := stores[r]
			wg.Go(func() {
				var mine []error
				defer func() {
					mu.Lock()
					errs = append(errs, mine...)
					mu.Unlock()
				}()
				if c%8 == 0 {
					// The bad changes.
					for range calls {
						if err := s.Release(ctx, "idle"); err == nil || !strings.Contains(err.Error(), "release without a reserved call") {
							mine = append(mine, fmt.Errorf("Release with no call counted: %v", err))
						}
						if err := s.Commit(ctx, "nobody", 5); !errors.Is(err, budget.ErrUnknownSession) {
							mine = append(mine, fmt.Errorf("Commit to an unknown session: %v", err))
						}
						if err := s.Record(ctx, "nobody", 5); !errors.Is(err, budget.ErrUnknownSession) {
							mine = append(mine, fmt.Errorf("Record to an unknown session: %v", err))
						}
					}
					return
				}
				for range calls {
					session := fmt.Sprint("s", rand.IntN(sessions))
					var used budget.Usage
					var err error
					switch rand.IntN(3) {
					case 0: // a call that ran
						if _, err = s.Reserve(ctx, session); err == nil {
							tokens := rand.Int64N(1000)
							err = s.Commit(ctx, session, tokens)
							used = budget.Usage{Calls: 1, Tokens: tokens}
						}
					case 1: // a call that didn't
						if _, err = s.Reserve(ctx, session); err == nil {
							err = s.Release(ctx, session)
						}
					case 2: // spending that already happened
						tokens := rand.Int64N(1000)
						err = s.Record(ctx, session, tokens)
						used = budget.Usage{Calls: 1, Tokens: tokens}
					}
					if err != nil {
						mine = append(mine, err)
						continue
					}
					mu.Lock()
					u := want[session]
					u.Calls += used.Calls
					u.Tokens += used.Tokens
					want[session] = u
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, session := range append(slices.Collect(maps.Keys(want)), "idle") {
		st, err := stores[1].Get(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		if st.Used != want[session] {
			t.Errorf("%s: used %+v, want %+v", session, st.Used, want[session])
		}
	}
}

// lockRow holds the budget row of session from another connection until
// the returned function is called.
func lockRow(t *testing.T, dsn, session string) (unlock func()) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM agentsec_budgets WHERE session = $1 FOR UPDATE`, session); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unlock = func() {
		once.Do(func() {
			_ = tx.Rollback(context.Background())
			_ = conn.Close(context.Background())
		})
	}
	t.Cleanup(unlock)
	return unlock
}

// waitForBlocked waits until n reservations wait on a row lock.
func waitForBlocked(t *testing.T, dsn string, n int) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for deadline := time.Now().Add(10 * time.Second); ; {
		var blocked int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%agentsec_budgets%'`).Scan(&blocked); err != nil {
			t.Fatal(err)
		}
		if blocked >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reservations wait on a lock after 10 s, want %d", blocked, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdSenders starts sending operations — as many as may be on their way
// at once — each on a session whose row another connection holds, and returns once
// all wait on their locks; unlock[i] lets the i-th go on. Operations of
// the kind made meanwhile wait in the queue.
func holdSenders(t *testing.T, dsn string, s *postgres.BudgetStore, sending int, op func(session string) error, wg *sync.WaitGroup) (unlock []func()) {
	t.Helper()
	for i := range sending {
		session := fmt.Sprint("held-", i)
		if _, err := s.Create(t.Context(), session, budget.Limits{Tokens: 100, Calls: 10}); err != nil {
			t.Fatal(err)
		}
		unlock = append(unlock, lockRow(t, dsn, session))
		wg.Go(func() {
			if err := op(session); err != nil {
				t.Error(err)
			}
		})
	}
	waitForBlocked(t, dsn, sending)
	return unlock
}

// holdReservers is holdSenders for reservations, let go at t's cleanup
// if not before: their Reserves go on after t's context ends.
func holdReservers(t *testing.T, dsn string, s *postgres.BudgetStore) (unlock []func()) {
	t.Helper()
	var wg sync.WaitGroup
	unlock = holdSenders(t, dsn, s, postgres.MaxReservationsSending, func(session string) error {
		_, err := s.Reserve(context.WithoutCancel(t.Context()), session)
		return err
	}, &wg)
	t.Cleanup(func() {
		for _, u := range unlock {
			u()
		}
		wg.Wait()
	})
	return unlock
}

// reserveOp is a Reserve, for holdSenders.
func reserveOp(t *testing.T, s *postgres.BudgetStore) func(string) error {
	return func(session string) error {
		_, err := s.Reserve(t.Context(), session)
		return err
	}
}

// waitQueued waits until exactly n calls of s wait in a queue.
func waitQueued(t *testing.T, s *postgres.BudgetStore, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.Queued() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued after 10 s, want %d", s.Queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// wantCanceled waits for what a caller that gave up is answered, which
// must be its context's error, at once.
func wantCanceled(t *testing.T, answered <-chan error, what string) {
	t.Helper()
	select {
	case err := <-answered:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: %v, want context.Canceled", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s has not returned after 5 s", what)
	}
}

// waitGivenBack waits until session counts no call: the slot taken for a
// caller that gave up is given back once its statement is done.
func waitGivenBack(t *testing.T, s *postgres.BudgetStore, session string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := s.Get(t.Context(), session)
		if err != nil {
			t.Fatal(err)
		}
		if st.Used.Calls == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the abandoned slot was not given back after 10 s: %+v", session, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Callers that give up while their batch is on its way get their
// context's error at once, and the slots taken for them go back.
func TestReserveAbandonedInABatch(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	s := db.Budgets()
	defer s.Close()
	sessions := []string{"one", "two"}
	var unlockRows []func()
	for _, session := range sessions {
		if _, err := s.Create(ctx, session, budget.Limits{Tokens: 100, Calls: 1}); err != nil {
			t.Fatal(err)
		}
		unlockRows = append(unlockRows, lockRow(t, dsn, session))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	unlockSenders := holdSenders(t, dsn, s, postgres.MaxReservationsSending, reserveOp(t, s), &wg)
	short, cancel := context.WithCancel(ctx)
	abandoned := make(chan error, len(sessions))
	for _, session := range sessions {
		go func() {
			_, err := s.Reserve(short, session)
			abandoned <- err
		}()
	}
	// Once both are queued, one sender is let go: they go out in one
	// batch, which waits on their rows.
	waitQueued(t, s, len(sessions))
	unlockSenders[0]()
	waitQueued(t, s, 0)
	waitForBlocked(t, dsn, postgres.MaxReservationsSending)
	cancel()
	for range sessions {
		wantCanceled(t, abandoned, "Reserve cancelled while its batch waits")
	}
	for _, unlock := range unlockRows {
		unlock()
	}
	// The batch now takes each session's only slot, then gives it back.
	for _, session := range sessions {
		waitGivenBack(t, s, session)
	}
	for _, unlock := range unlockSenders {
		unlock()
	}
}

// A Commit whose caller gives up once it is on its way — on its own
// statement, or in a batch — is waited for: its answer is the
// database's, and its tokens are counted once.
func TestCommitWaitedForOnItsWay(t *testing.T) {
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprint("batched=", batched), func(t *testing.T) {
			ctx := t.Context()
			dsn, db := migratedDSN(t)
			s := db.Budgets()
			defer s.Close()
			if _, err := s.Create(ctx, "spent", budget.Limits{Tokens: 100, Calls: 10}); err != nil {
				t.Fatal(err)
			}
			unlockRow := lockRow(t, dsn, "spent")
			var wg sync.WaitGroup
			defer wg.Wait()
			var unlockSenders []func()
			if batched {
				unlockSenders = holdSenders(t, dsn, s, postgres.MaxBatchesSending, func(session string) error { return s.Commit(ctx, session, 1) }, &wg)
				defer func() {
					for _, unlock := range unlockSenders {
						unlock()
					}
				}()
			}
			short, cancel := context.WithCancel(ctx)
			committed := make(chan error, 1)
			go func() { committed <- s.Commit(short, "spent", 7) }()
			if batched {
				// Once it is queued, one sender is let go, and the Commit
				// goes out in a batch that waits on the row.
				waitQueued(t, s, 1)
				unlockSenders[0]()
				waitQueued(t, s, 0)
				waitForBlocked(t, dsn, postgres.MaxBatchesSending)
			} else {
				waitForBlocked(t, dsn, 1)
			}
			cancel()
			select {
			case err := <-committed:
				t.Fatalf("Commit returned %v while its statement still waits, want it to wait", err)
			case <-time.After(200 * time.Millisecond):
			}
			unlockRow()
			if err := <-committed; err != nil {
				t.Fatalf("Commit once its row was free: %v", err)
			}
			if st, err := s.Get(ctx, "spent"); err != nil || st.Used != (budget.Usage{Tokens: 7}) {
				t.Errorf("Get = %+v, %v; want 7 tokens used", st, err)
			}
		})
	}
}

// A caller that gives up while waiting for a batch to be sent leaves the
// queue at once, and no slot is ever taken for it.
func TestReserveAbandonedInTheQueue(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	s := db.Budgets()
	defer s.Close()
	if _, err := s.Create(ctx, "queued", budget.Limits{Tokens: 100, Calls: 10}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	unlocks := holdSenders(t, dsn, s, postgres.MaxReservationsSending, reserveOp(t, s), &wg)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := s.Reserve(short, "queued"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Reserve with a 200 ms deadline: %v, want context.DeadlineExceeded", err)
	}
	for _, unlock := range unlocks {
		unlock()
	}
	wg.Wait()
	// The queue is empty now: another call goes out, and only its slot
	// is counted.
	st, err := s.Reserve(ctx, "queued")
	if err != nil {
		t.Fatal(err)
	}
	if st.Used.Calls != 1 {
		t.Errorf("after one abandoned and one taken reservation the session used %d calls, want 1", st.Used.Calls)
	}
}

// Lazy commits queued together go out in one batch, and each gets the
// answer it would get alone: a session's second commit in the batch
// sees its first, and a commit to a session at its limit, to one that
// doesn't exist, or one whose count would overflow is refused as
// CommitWithin refuses it, without failing the others.
func TestLazyCommitsInABatch(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	s := db.Budgets()
	defer s.Close()
	limits := budget.Limits{Tokens: 100, Calls: 10}
	for _, session := range []string{"twice", "full", "alone"} {
		if _, err := s.Create(ctx, session, limits); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, "huge", budget.Limits{Tokens: math.MaxInt64, Calls: 10}); err != nil {
		t.Fatal(err)
	}
	for session, tokens := range map[string]int64{"twice": 50, "full": 100} {
		if err := s.Record(ctx, session, tokens); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Record(ctx, "huge", math.MaxInt64-10); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	unlockSenders := holdSenders(t, dsn, s, postgres.MaxBatchesSending, func(session string) error {
		_, err := s.CommitWithinLazily(ctx, session, 1)
		return err
	}, &wg)
	defer func() {
		for _, unlock := range unlockSenders {
			unlock()
		}
	}()
	commits := []struct {
		session string
		tokens  int64
	}{{"twice", 60}, {"twice", 70}, {"full", 5}, {"nobody", 5}, {"huge", 20}, {"alone", 30}}
	type answer struct {
		st  budget.State
		err error
	}
	answers := make([]answer, len(commits))
	var done sync.WaitGroup
	for i, c := range commits {
		done.Go(func() {
			st, err := s.CommitWithinLazily(ctx, c.session, c.tokens)
			answers[i] = answer{st, err}
		})
	}
	waitQueued(t, s, len(commits))
	unlockSenders[0]() // the queue goes out as one batch
	done.Wait()

	// "twice": whichever went first is counted, and crosses the limit;
	// the other finds the session at its limit.
	counted := -1
	for _, i := range []int{0, 1} {
		if answers[i].err == nil {
			if counted >= 0 {
				t.Fatalf("both commits to a session with 50 of 100 tokens left counted: %+v", answers[:2])
			}
			counted = i
		} else if !errors.Is(answers[i].err, budget.ErrExceeded) {
			t.Fatalf("second commit to a session past its limit: %v, want ErrExceeded", answers[i].err)
		}
	}
	if counted < 0 {
		t.Fatalf("neither commit to a session with 50 of 100 tokens used counted: %+v", answers[:2])
	}
	if want := 50 + commits[counted].tokens; answers[counted].st.Used.Tokens != want {
		t.Errorf("counted commit's state %+v, want %d tokens used", answers[counted].st, want)
	}
	var ee *budget.ExceededError
	if !errors.As(answers[2].err, &ee) || ee.Reason() != budget.ReasonTokenLimit {
		t.Errorf("commit to a session at its limit: %v, want an *ExceededError for the token limit", answers[2].err)
	}
	if !errors.Is(answers[3].err, budget.ErrUnknownSession) {
		t.Errorf("commit to an unknown session: %v, want ErrUnknownSession", answers[3].err)
	}
	if !errors.Is(answers[4].err, budget.ErrInvalidTokens) {
		t.Errorf("commit that would overflow: %v, want ErrInvalidTokens", answers[4].err)
	}
	if answers[5].err != nil || answers[5].st.Used.Tokens != 30 {
		t.Errorf("lone commit in the batch: %+v, %v; want 30 tokens used", answers[5].st, answers[5].err)
	}
	for session, want := range map[string]int64{"twice": 50 + commits[counted].tokens, "full": 100, "alone": 30, "huge": math.MaxInt64 - 10} {
		if st, err := s.Get(ctx, session); err != nil || st.Used.Tokens != want {
			t.Errorf("%s: Get = %+v, %v; want %d tokens used", session, st, err, want)
		}
	}
}

// Two replicas' stores, each with many callers counting tokens lazily on
// the same sessions, so that their batches hold many of the same rows
// at once and some sessions twice: each session's tokens are exactly the
// sum of the commits that were answered as counted, they pass its limit
// by less than one result, and no batch deadlocks or fails.
func TestLazyCommitBatchesAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	const (
		replicas  = 2
		callers   = 48 // per replica
		sessions  = 12
		commits   = 30 // per caller
		maxResult = 40
	)
	limits := budget.Limits{Tokens: 5000, Calls: 1}
	stores := replicaStores(t, replicas, sessions, limits)
	var (
		mu      sync.Mutex
		counted = map[string]int64{}
		errs    []error
	)
	var wg sync.WaitGroup
	for r := range replicas {
		for range callers {
			s := stores[r]
			wg.Go(func() {
				for range commits {
					session := fmt.Sprint("s", rand.IntN(sessions))
					tokens := 1 + rand.Int64N(maxResult)
					_, err := s.CommitWithinLazily(ctx, session, tokens)
					mu.Lock()
					switch {
					case err == nil:
						counted[session] += tokens
					case !errors.Is(err, budget.ErrExceeded):
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i := range sessions {
		session := fmt.Sprint("s", i)
		st, err := stores[1].Get(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		if st.Used.Tokens != counted[session] {
			t.Errorf("%s: %d tokens used, but the commits answered as counted add up to %d", session, st.Used.Tokens, counted[session])
		}
		if st.Used.Tokens >= limits.Tokens+maxResult {
			t.Errorf("%s: %d tokens used, more than one result past the limit of %d", session, st.Used.Tokens, limits.Tokens)
		}
	}
}

// A caller that gives up while its reservation is on its own statement
// is answered at once; the statement is not cancelled — whether the
// server had taken the slot would be unknown — and the slot it takes
// goes back.
func TestReserveAbandonedOnItsOwn(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	s := db.Budgets()
	defer s.Close()
	if _, err := s.Create(ctx, "lone", budget.Limits{Tokens: 100, Calls: 1}); err != nil {
		t.Fatal(err)
	}
	unlock := lockRow(t, dsn, "lone")
	short, cancel := context.WithCancel(ctx)
	abandoned := make(chan error, 1)
	go func() {
		_, err := s.Reserve(short, "lone")
		abandoned <- err
	}()
	waitForBlocked(t, dsn, 1)
	cancel()
	wantCanceled(t, abandoned, "Reserve cancelled while its statement waits")
	unlock()
	// The statement now takes the session's only slot, then gives it back.
	waitGivenBack(t, s, "lone")
}

// A session the database can't hold — one with a NUL, which an agent of
// the decision API may send — is refused before it joins a batch, and
// the reservations batched with it go on.
func TestBadSessionSpoilsNoBatch(t *testing.T) {
	ctx := t.Context()
	dsn, db := migratedDSN(t)
	s := db.Budgets()
	defer s.Close()
	if _, err := s.Create(ctx, "good", budget.Limits{Tokens: 100, Calls: 1}); err != nil {
		t.Fatal(err)
	}
	unlock := holdReservers(t, dsn, s)
	bad := make(chan error, 1)
	go func() {
		_, err := s.Reserve(ctx, "bad\x00")
		bad <- err
	}()
	good := make(chan error, 1)
	go func() {
		_, err := s.Reserve(ctx, "good")
		good <- err
	}()
	select {
	case err := <-bad:
		if !errors.Is(err, budget.ErrInvalidSession) {
			t.Fatalf("Reserve of a session with a NUL: %v, want ErrInvalidSession", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Reserve of a session with a NUL was not refused at once: it joined the queue")
	}
	waitQueued(t, s, 1)
	unlock[0]()
	if err := <-good; err != nil {
		t.Fatalf("a reservation queued beside a bad session's: %v", err)
	}
	for _, op := range []func() error{
		func() error { return s.Commit(ctx, "bad\x00", 1) },
		func() error { _, err := s.CommitWithinLazily(ctx, "bad\x00", 1); return err },
	} {
		if err := op(); !errors.Is(err, budget.ErrInvalidSession) {
			t.Errorf("a change to a session with a NUL: %v, want ErrInvalidSession", err)
		}
	}
}
