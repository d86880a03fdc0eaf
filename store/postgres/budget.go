package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/budget"
)

// BudgetStore is a budget.Store in PostgreSQL, shared by every replica
// that uses the database. A reservation's check and increment are one
// statement, one step under the session's row lock, so a limit holds
// exactly however many replicas and callers reserve at once. Changes made
// at once go in batches (batcher).
type BudgetStore struct {
	ref
	reservations batcher[string, reserved]
	changes      batcher[change, error] // Commit, Record and Release
	lazyCommits  batcher[lazyCommit, committed]
}

func newBudgetStore(db *DB) *BudgetStore {
	s := &BudgetStore{ref: db.ref()}
	s.reservations = batcher[string, reserved]{one: s.reserveOne, many: s.reserveMany, abandoned: s.giveBack,
		sendingMax: maxReservationsSending}
	s.changes = batcher[change, error]{one: s.changeOne, many: s.changeMany, sendingMax: maxBatchesSending}
	s.lazyCommits = batcher[lazyCommit, committed]{one: s.lazyCommitOne, many: s.lazyCommitMany, sendingMax: maxBatchesSending}
	return s
}

var _ budget.LazyCommitter = (*BudgetStore)(nil)

// Close implements budget.Store: the store's reservations stop riding
// the DB's appends, and its hold on the DB's pool is released.
func (s *BudgetStore) Close() error {
	s.db.setRider(s, false)
	return s.ref.Close()
}

const stateColumns = `token_limit, call_limit, tokens_used, calls_used`

func scanState(row pgx.Row) (budget.State, error) {
	var s budget.State
	err := row.Scan(&s.Limits.Tokens, &s.Limits.Calls, &s.Used.Tokens, &s.Used.Calls)
	return s, err
}

// Create implements budget.Store.
func (s *BudgetStore) Create(ctx context.Context, session string, limits budget.Limits) (budget.State, error) {
	if err := budget.CheckSession(session); err != nil {
		return budget.State{}, err
	}
	if err := limits.Validate(); err != nil {
		return budget.State{}, err
	}
	st, err := scanState(s.db.pool.QueryRow(ctx, `INSERT INTO agentsec_budgets (session, token_limit, call_limit)
		VALUES ($1, $2, $3) ON CONFLICT (session) DO NOTHING RETURNING `+stateColumns,
		session, limits.Tokens, limits.Calls))
	if noRows(err) {
		// The session exists and keeps its own limits.
		return s.Get(ctx, session)
	}
	if err != nil {
		return budget.State{}, unavailable(fmt.Sprintf("creating budget session %q", session), err)
	}
	return st, nil
}

// Reserve implements budget.Store. The slot is taken by one statement,
// check and increment together, with the reservations other callers make
// at the same moment (batcher). A caller that gives up while its
// reservation is on its way — on its own statement, in a batch, or
// riding an append — is answered with its context's error at once, and
// the slot, if one was taken, is given back once the statement is done,
// if the database takes the release: the session is counted over only
// when it doesn't, and never short.
func (s *BudgetStore) Reserve(ctx context.Context, session string) (budget.State, error) {
	// A session the database can't hold would fail the batch it joined.
	if err := budget.CheckSession(session); err != nil {
		return budget.State{}, err
	}
	r, err := s.reservations.do(ctx, session)
	if err != nil {
		return budget.State{}, err
	}
	return r.state, r.err
}

// Commit implements budget.Store.
func (s *BudgetStore) Commit(ctx context.Context, session string, tokens int64) error {
	return s.change(ctx, change{session: session, tokens: tokens})
}

// Record implements budget.Store.
func (s *BudgetStore) Record(ctx context.Context, session string, tokens int64) error {
	return s.change(ctx, change{session: session, calls: 1, tokens: tokens})
}

// CommitWithin implements budget.Store with one statement, whose WHERE
// clause is the check. It is not batched: its answer depends on the
// changes before it, which a batch has no order between.
func (s *BudgetStore) CommitWithin(ctx context.Context, session string, tokens int64) (budget.State, error) {
	return s.commitWithin(ctx, session, tokens, false)
}

// CommitWithinLazily implements budget.LazyCommitter: CommitWithin's
// statement in a transaction committed with synchronous_commit off,
// which returns without waiting for the server's write-ahead log to
// reach the disk. The commit is in that log before any commit made after
// it, and a synchronous commit makes everything before it durable: the
// call's record, appended next to an AuditStore of the same DB, takes the
// count with it. Lazy commits made at once share a statement and a
// transaction (lazyCommitMany).
func (s *BudgetStore) CommitWithinLazily(ctx context.Context, session string, tokens int64) (budget.State, error) {
	if err := budget.CheckTokens(0, tokens); err != nil {
		return budget.State{}, err
	}
	if err := budget.CheckSession(session); err != nil {
		return budget.State{}, err
	}
	c, err := s.lazyCommits.do(ctx, lazyCommit{session: session, tokens: tokens})
	if err != nil {
		return budget.State{}, err // ctx ended while the commit was queued
	}
	return c.state, c.err
}

// A lazyCommit is a lazy CommitWithin's request, and committed its answer.
type (
	lazyCommit struct {
		session string
		tokens  int64
	}
	committed struct {
		state budget.State
		err   error
	}
)

func (s *BudgetStore) lazyCommitOne(ctx context.Context, c lazyCommit) committed {
	st, err := s.commitWithin(ctx, c.session, c.tokens, true)
	return committed{st, err}
}

// commitWithinLocked is commitWithinSQL for a batch of sessions, each at
// most once: it locks their rows in session order first, as
// reserveLocked does, and returns the state of each session it counted.
const commitWithinLocked = `WITH locked AS MATERIALIZED (
		SELECT session FROM agentsec_budgets
		WHERE session = ANY ($1::text[]) ORDER BY session FOR UPDATE
	), req AS (
		SELECT u.s, u.t FROM unnest($1::text[], $2::bigint[]) AS u(s, t) JOIN locked l ON l.session = u.s
	)
	UPDATE agentsec_budgets b SET tokens_used = b.tokens_used + req.t
	FROM req WHERE b.session = req.s AND b.tokens_used < b.token_limit AND b.tokens_used <= $3::bigint - req.t
	RETURNING b.session, b.token_limit, b.call_limit, b.tokens_used, b.calls_used`

// lazyCommitMany makes a batch of lazy commits in one statement and one
// transaction, committed with synchronous_commit off. A session's first
// commit in the batch is in the statement; its others, whose answers
// depend on the ones before, and each commit the statement did not count
// — a session at its limit, unknown, or whose counter would overflow —
// are then made one at a time, for their own answers.
func (s *BudgetStore) lazyCommitMany(ctx context.Context, cs []lazyCommit) []committed {
	out := make([]committed, len(cs))
	first := make(map[string]int, len(cs)) // session → index in cs of its commit in the statement
	sessions := make([]string, 0, len(cs))
	tokens := make([]int64, 0, len(cs))
	for i, c := range cs {
		if _, ok := first[c.session]; !ok {
			first[c.session] = i
			sessions = append(sessions, c.session)
			tokens = append(tokens, c.tokens)
		}
	}
	counted, err := s.commitLockedLazily(ctx, sessions, tokens)
	if err != nil {
		for i, c := range cs {
			out[i].err = unavailable(fmt.Sprintf("counting usage of session %q", c.session), err)
		}
		return out
	}
	for i, c := range cs {
		if st, ok := counted[c.session]; ok && first[c.session] == i {
			out[i].state = st
			continue
		}
		out[i] = s.lazyCommitOne(ctx, c)
	}
	return out
}

// commitLockedLazily runs commitWithinLocked in a transaction committed
// with synchronous_commit off, in one round trip, and returns the state
// of each session it counted.
func (s *BudgetStore) commitLockedLazily(ctx context.Context, sessions []string, tokens []int64) (map[string]budget.State, error) {
	res := s.db.pool.SendBatch(ctx, lazily(commitWithinLocked, sessions, tokens, int64(math.MaxInt64)))
	counted := make(map[string]budget.State, len(sessions))
	_, err := res.Exec()
	if err == nil {
		_, err = res.Exec()
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = res.Query(); err == nil {
			for rows.Next() {
				var session string
				var st budget.State
				if err = rows.Scan(&session, &st.Limits.Tokens, &st.Limits.Calls, &st.Used.Tokens, &st.Used.Calls); err != nil {
					break
				}
				counted[session] = st
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
	}
	if err == nil {
		err = readCommit(res)
	}
	// As in commitLazily, a connection returned in a transaction is
	// discarded.
	if err = errors.Join(err, res.Close()); err != nil {
		return nil, err
	}
	return counted, nil
}

// SyncedBy implements budget.LazyCommitter: an AuditStore of the same DB
// makes the lazy commits before its appends durable.
func (s *BudgetStore) SyncedBy(store any) bool {
	a, ok := store.(*AuditStore)
	return ok && a.db == s.db
}

const commitWithinSQL = `UPDATE agentsec_budgets SET tokens_used = tokens_used + $2::bigint
	WHERE session = $1 AND tokens_used < token_limit AND tokens_used <= $3::bigint - $2::bigint
	RETURNING ` + stateColumns

func (s *BudgetStore) commitWithin(ctx context.Context, session string, tokens int64, lazy bool) (budget.State, error) {
	if err := budget.CheckTokens(0, tokens); err != nil {
		return budget.State{}, err
	}
	for {
		var st budget.State
		var err error
		if lazy {
			st, err = s.commitLazily(ctx, session, tokens)
		} else {
			st, err = scanState(s.db.pool.QueryRow(ctx, commitWithinSQL, session, tokens, int64(math.MaxInt64)))
		}
		if err == nil {
			return st, nil
		}
		if !noRows(err) {
			return budget.State{}, unavailable(fmt.Sprintf("counting usage of session %q", session), err)
		}
		if st, err = s.Get(ctx, session); err != nil {
			return budget.State{}, err
		}
		if err := budget.CheckTokens(st.Used.Tokens, tokens); err != nil {
			return st, err
		}
		if st.Used.Tokens >= st.Limits.Tokens {
			return st, &budget.ExceededError{Session: session, State: st}
		}
		// The session was created between the two statements: try again.
	}
}

// lazily is a batch of four statements, one round trip: sql with args,
// in a transaction committed with synchronous_commit off.
func lazily(sql string, args ...any) *pgx.Batch {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(sql, args...)
	b.Queue("COMMIT")
	return b
}

// commitLazily runs commitWithinSQL in a transaction committed with
// synchronous_commit off, its four statements sent in one round trip.
func (s *BudgetStore) commitLazily(ctx context.Context, session string, tokens int64) (budget.State, error) {
	res := s.db.pool.SendBatch(ctx, lazily(commitWithinSQL, session, tokens, int64(math.MaxInt64)))
	var st budget.State
	var err error
	for i := range 4 {
		if i == 2 {
			st, err = scanState(res.QueryRow())
		} else {
			_, err = res.Exec()
		}
		if err != nil {
			break
		}
	}
	// After a failed statement the batch's transaction is aborted and
	// nothing of it commits; the pool discards a connection returned in
	// a transaction, so none is reused in that state.
	return st, errors.Join(err, res.Close())
}

// Forget implements budget.Store.
func (s *BudgetStore) Forget(ctx context.Context, session string) error {
	if _, err := s.db.pool.Exec(ctx, `DELETE FROM agentsec_budgets WHERE session = $1`, session); err != nil {
		return unavailable(fmt.Sprintf("forgetting budget session %q", session), err)
	}
	return nil
}

// Release implements budget.Store.
func (s *BudgetStore) Release(ctx context.Context, session string) error {
	return s.change(ctx, change{session: session, calls: -1})
}

// A change adds calls and tokens to a session's usage: a Commit, a
// Record, or (calls -1) a Release.
type change struct {
	session       string
	calls, tokens int64
}

func (s *BudgetStore) change(ctx context.Context, c change) error {
	if err := budget.CheckTokens(0, c.tokens); err != nil {
		return err
	}
	if err := budget.CheckSession(c.session); err != nil {
		return err
	}
	answer, err := s.changes.do(ctx, c)
	if err != nil {
		return err // ctx ended while c was queued
	}
	return answer
}

// changeOne makes one change with one statement, unless a counter would
// overflow or, for a Release, no call is counted.
func (s *BudgetStore) changeOne(ctx context.Context, c change) error {
	if c.calls < 0 {
		return s.releaseOne(ctx, c.session)
	}
	tag, err := s.db.pool.Exec(ctx, `UPDATE agentsec_budgets
		SET tokens_used = tokens_used + $2::bigint, calls_used = calls_used + $3::bigint
		WHERE session = $1 AND tokens_used <= $4::bigint - $2::bigint AND calls_used <= $4::bigint - $3::bigint`,
		c.session, c.tokens, c.calls, int64(math.MaxInt64))
	if err != nil {
		return unavailable(fmt.Sprintf("counting usage of session %q", c.session), err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	st, err := s.Get(ctx, c.session)
	if err != nil {
		return err
	}
	if err := budget.CheckTokens(st.Used.Tokens, c.tokens); err != nil {
		return err
	}
	return fmt.Errorf("budget: session %q: call counter would overflow", c.session)
}

func (s *BudgetStore) releaseOne(ctx context.Context, session string) error {
	tag, err := s.db.pool.Exec(ctx, `UPDATE agentsec_budgets SET calls_used = calls_used - 1
		WHERE session = $1 AND calls_used > 0`, session)
	if err != nil {
		return unavailable(fmt.Sprintf("releasing a call of session %q", session), err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if _, err := s.Get(ctx, session); err != nil {
		return err
	}
	return fmt.Errorf("budget: session %q: release without a reserved call", session)
}

// changeLocked makes a batch of changes in one statement, for each
// session whose changes can all be made: it exists, and no counter would
// overflow ($4, the largest bigint) or go below zero. The sums are
// numeric, so they can't overflow themselves. It locks the sessions' rows
// in session order first, as reserveLocked does, and returns the sessions
// it left unchanged.
const changeLocked = `WITH req AS (
		SELECT u.s, sum(u.c) AS c, sum(u.t) AS t
		FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(s, c, t) GROUP BY u.s
	), locked AS MATERIALIZED (
		SELECT session, tokens_used, calls_used FROM agentsec_budgets
		WHERE session = ANY ($1::text[]) ORDER BY session FOR UPDATE
	), fits AS (
		SELECT req.s, req.c, req.t, l.session IS NOT NULL
			AND l.tokens_used + req.t <= $4::bigint AND l.calls_used + req.c BETWEEN 0 AND $4::bigint AS ok
		FROM req LEFT JOIN locked l ON l.session = req.s
	), upd AS (
		UPDATE agentsec_budgets b SET tokens_used = b.tokens_used + f.t, calls_used = b.calls_used + f.c
		FROM fits f WHERE b.session = f.s AND f.ok
	)
	SELECT s FROM fits WHERE NOT ok`

// changeMany makes a batch of changes in one statement and one commit.
// The changes made at once have no order between them, so the batch's
// checks are on each session's sums. A session whose changes can't all
// be made has them made one at a time, each with its own answer.
func (s *BudgetStore) changeMany(ctx context.Context, cs []change) []error {
	sessions := make([]string, len(cs))
	calls := make([]int64, len(cs))
	tokens := make([]int64, len(cs))
	for i, c := range cs {
		sessions[i], calls[i], tokens[i] = c.session, c.calls, c.tokens
	}
	out := make([]error, len(cs))
	rows, err := s.db.pool.Query(ctx, changeLocked, sessions, calls, tokens, int64(math.MaxInt64))
	var unchanged []string
	if err == nil {
		unchanged, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		for i, c := range cs {
			out[i] = unavailable(fmt.Sprintf("counting usage of session %q", c.session), err)
		}
		return out
	}
	for i, c := range cs {
		if slices.Contains(unchanged, c.session) {
			out[i] = s.changeOne(ctx, c)
		}
	}
	return out
}

// Get implements budget.Store.
func (s *BudgetStore) Get(ctx context.Context, session string) (budget.State, error) {
	st, err := scanState(s.db.pool.QueryRow(ctx, `SELECT `+stateColumns+` FROM agentsec_budgets WHERE session = $1`, session))
	if noRows(err) {
		return budget.State{}, fmt.Errorf("budget: session %q: %w", session, budget.ErrUnknownSession)
	}
	if err != nil {
		return budget.State{}, unavailable(fmt.Sprintf("reading budget session %q", session), err)
	}
	return st, nil
}
