package postgres

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/budget"
)

// BudgetStore is a budget.Store in PostgreSQL, shared by every replica
// that uses the database. Each change is one statement whose check and
// update are one step under the session's row lock, so a limit holds
// exactly however many replicas and callers reserve at once.
type BudgetStore struct {
	ref
	reserver reserver
}

var _ budget.Store = (*BudgetStore)(nil)

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
// at the same moment: see reserver.
func (s *BudgetStore) Reserve(ctx context.Context, session string) (budget.State, error) {
	return s.reserve(ctx, session)
}

// Commit implements budget.Store.
func (s *BudgetStore) Commit(ctx context.Context, session string, tokens int64) error {
	return s.add(ctx, session, 0, tokens)
}

// Record implements budget.Store.
func (s *BudgetStore) Record(ctx context.Context, session string, tokens int64) error {
	return s.add(ctx, session, 1, tokens)
}

// add adds calls and tokens to a session's usage unless a counter would
// overflow.
func (s *BudgetStore) add(ctx context.Context, session string, calls, tokens int64) error {
	if err := budget.CheckTokens(0, tokens); err != nil {
		return err
	}
	tag, err := s.db.pool.Exec(ctx, `UPDATE agentsec_budgets
		SET tokens_used = tokens_used + $2::bigint, calls_used = calls_used + $3::bigint
		WHERE session = $1 AND tokens_used <= $4::bigint - $2::bigint AND calls_used <= $4::bigint - $3::bigint`,
		session, tokens, calls, int64(math.MaxInt64))
	if err != nil {
		return unavailable(fmt.Sprintf("counting usage of session %q", session), err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	st, err := s.Get(ctx, session)
	if err != nil {
		return err
	}
	if err := budget.CheckTokens(st.Used.Tokens, tokens); err != nil {
		return err
	}
	return fmt.Errorf("budget: session %q: call counter would overflow", session)
}

// Release implements budget.Store.
func (s *BudgetStore) Release(ctx context.Context, session string) error {
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
