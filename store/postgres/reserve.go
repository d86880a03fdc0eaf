package postgres

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/budget"
)

// A reserved is a reservation's answer.
type reserved struct {
	state budget.State
	err   error
}

// reserveOne takes one slot with one statement: the UPDATE's WHERE clause
// is the check, which PostgreSQL makes again on the row's newest version
// when concurrent updates queue on it. Only a refusal costs a second
// statement, to say why.
func (s *BudgetStore) reserveOne(ctx context.Context, session string) reserved {
	for {
		st, err := scanState(s.db.pool.QueryRow(ctx, `UPDATE agentsec_budgets SET calls_used = calls_used + 1
			WHERE session = $1 AND calls_used < call_limit AND tokens_used < token_limit
			RETURNING `+stateColumns, session))
		if err == nil {
			return reserved{state: st}
		}
		if !noRows(err) {
			return reserved{err: unavailable(fmt.Sprintf("reserving a call for session %q", session), err)}
		}
		st, err = s.Get(ctx, session)
		if err != nil {
			return reserved{err: err}
		}
		if !st.Allows() {
			return reserved{st, &budget.ExceededError{Session: session, State: st}}
		}
		// The state changed between the two statements — the session
		// was created, or a slot released — and now has room: try again.
	}
}

// reserveLocked takes a slot for each element of $1 in one statement. It
// first locks the sessions' rows, in session order — two batches lock the
// rows they share in the same order, so they can't deadlock — and reads
// them as they are once locked, which they stay until the commit. A
// session's k-th element (k counted in array order) takes a slot if the
// session has k slots left and tokens under its limit, and one UPDATE
// adds the slots taken. Each element's answer: its 1-based place in the
// array, whether the session exists, whether the slot was taken, and the
// session's state just after it.
const reserveLocked = `WITH locked AS MATERIALIZED (
		SELECT session, token_limit, call_limit, tokens_used, calls_used FROM agentsec_budgets
		WHERE session = ANY ($1::text[]) ORDER BY session FOR UPDATE
	), req AS (
		SELECT u.o, u.s, row_number() OVER (PARTITION BY u.s ORDER BY u.o) AS k
		FROM unnest($1::text[]) WITH ORDINALITY AS u(s, o)
	), ans AS (
		SELECT req.o, req.s, req.k, l.session IS NOT NULL AS known,
			coalesce(l.tokens_used < l.token_limit AND req.k <= l.call_limit - l.calls_used, false) AS taken,
			l.token_limit, l.call_limit, l.tokens_used, l.calls_used
		FROM req LEFT JOIN locked l ON l.session = req.s
	), per_session AS (
		SELECT ans.s, count(*) FILTER (WHERE ans.taken) AS n FROM ans GROUP BY ans.s
	), upd AS (
		UPDATE agentsec_budgets b SET calls_used = b.calls_used + p.n
		FROM per_session p WHERE b.session = p.s AND p.n > 0
	)
	SELECT ans.o, ans.known, ans.taken, ans.token_limit, ans.call_limit, ans.tokens_used,
		ans.calls_used + CASE WHEN ans.taken THEN ans.k ELSE p.n END
	FROM ans JOIN per_session p ON p.s = ans.s`

// reserveMany takes a batch's slots with reserveLocked: one round trip,
// one commit.
func (s *BudgetStore) reserveMany(ctx context.Context, sessions []string) []reserved {
	rows, err := s.db.pool.Query(ctx, reserveLocked, sessions)
	var out []reserved
	if err == nil {
		out, err = readReserved(rows, sessions)
	}
	if err != nil {
		out = make([]reserved, len(sessions))
		for i, session := range sessions {
			out[i].err = unavailable(fmt.Sprintf("reserving a call for session %q", session), err)
		}
	}
	return out
}

// giveBack releases a slot taken for a caller that had given up waiting:
// its call never runs. If the release fails, the session stays
// over-counted by one, never under.
func (s *BudgetStore) giveBack(ctx context.Context, session string, r reserved) {
	if r.err == nil {
		_ = s.Release(ctx, session)
	}
}

// readReserved reads the answers of reserveLocked, one per element. They
// count only if the statement, and so its commit, succeeded.
func readReserved(rows pgx.Rows, sessions []string) ([]reserved, error) {
	defer rows.Close()
	out := make([]reserved, len(sessions))
	answered := make([]bool, len(sessions))
	for rows.Next() {
		var (
			ord            int64
			known, taken   bool
			lt, lc, ut, uc *int64
		)
		if err := rows.Scan(&ord, &known, &taken, &lt, &lc, &ut, &uc); err != nil {
			return nil, err
		}
		if ord < 1 || ord > int64(len(sessions)) || answered[ord-1] {
			return nil, fmt.Errorf("a reservation batch answered for element %d of %d twice or out of range", ord, len(sessions))
		}
		answered[ord-1] = true
		session := sessions[ord-1]
		if !known {
			out[ord-1].err = fmt.Errorf("budget: session %q: %w", session, budget.ErrUnknownSession)
			continue
		}
		if lt == nil || lc == nil || ut == nil || uc == nil {
			return nil, fmt.Errorf("a reservation batch answered for session %q without its state", session)
		}
		st := budget.State{Limits: budget.Limits{Tokens: *lt, Calls: *lc}, Used: budget.Usage{Tokens: *ut, Calls: *uc}}
		out[ord-1].state = st
		if !taken {
			out[ord-1].err = &budget.ExceededError{Session: session, State: st}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if i := slices.Index(answered, false); i >= 0 {
		return nil, fmt.Errorf("a reservation batch gave no answer for element %d of %d", i+1, len(sessions))
	}
	return out, nil
}
