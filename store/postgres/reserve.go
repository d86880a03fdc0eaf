package postgres

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsec/agentsec/budget"
)

// Reservations made at once are sent together: one statement, one
// commit. Every reservation must be committed before its call goes to
// the upstream, and a commit waits for the server's WAL to reach disk, so
// one commit per reservation would make that wait, and the server's work
// around it, the limit on a replica's calls per second. While fewer than
// maxBatchesSending batches are on their way, a call goes out at once, on
// its own; calls that arrive meanwhile wait, and go out together when a
// batch comes back.
const (
	maxBatchesSending = 2
	maxBatch          = 256
	// reserveTimeout bounds a batch: its callers wait on it, and a
	// database that doesn't answer must fail their calls, not hold them.
	reserveTimeout = 15 * time.Second
)

// A reserver groups the Reserve calls of one BudgetStore into batches.
type reserver struct {
	mu      sync.Mutex
	queue   []*reserveCall // waiting for a batch
	sending int            // batches on their way
}

// A reserveCall is one Reserve waiting for its batch.
type reserveCall struct {
	session string
	done    chan struct{} // closed once state and err are set
	state   budget.State
	err     error

	// Guarded by the reserver's mu.
	sent      bool // in a batch on its way
	abandoned bool // its caller gave up; a slot taken for it goes back
}

// reserve takes a call slot of session: at once, on the caller's own
// statement, if fewer than maxBatchesSending batches are on their way —
// the queue is then empty — or else in the next batch. A caller that
// gives up while its own statement runs may leave the slot taken, if the
// server committed it first; one that gives up while its batch is on its
// way has the slot given back. Either way the session is never counted
// short.
func (s *BudgetStore) reserve(ctx context.Context, session string) (budget.State, error) {
	r := &s.reserver
	r.mu.Lock()
	if r.sending < maxBatchesSending {
		r.sending++
		r.mu.Unlock()
		st, err := s.reserveOne(ctx, session)
		s.sendQueued()
		return st, err
	}
	c := &reserveCall{session: session, done: make(chan struct{})}
	r.queue = append(r.queue, c)
	r.mu.Unlock()

	select {
	case <-c.done:
		return c.state, c.err
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-c.done:
		return c.state, c.err
	default:
	}
	if c.sent {
		c.abandoned = true
	} else {
		r.queue = slices.DeleteFunc(r.queue, func(q *reserveCall) bool { return q == c })
	}
	return budget.State{}, ctx.Err()
}

// sendQueued is called by a sender that is done: it hands its turn to a
// goroutine that sends the calls queued meanwhile, or ends it.
func (s *BudgetStore) sendQueued() {
	r := &s.reserver
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		r.sending--
		return
	}
	batch := r.next()
	go func() {
		s.sendBatch(batch)
		s.sendQueued()
	}()
}

// next takes the next batch off the queue. The caller holds r.mu.
func (r *reserver) next() []*reserveCall {
	n := min(len(r.queue), maxBatch)
	batch := slices.Clone(r.queue[:n])
	r.queue = slices.Delete(r.queue, 0, n)
	for _, c := range batch {
		c.sent = true
	}
	return batch
}

// sendBatch reserves a slot for each call of batch in one statement and
// gives each call its answer.
func (s *BudgetStore) sendBatch(batch []*reserveCall) {
	ctx, cancel := context.WithTimeout(context.Background(), reserveTimeout)
	defer cancel()
	sessions := make([]string, len(batch))
	for i, c := range batch {
		sessions[i] = c.session
	}
	states, err := s.reserveAll(ctx, sessions)

	var giveBack []string
	r := &s.reserver
	r.mu.Lock()
	for i, c := range batch {
		if err != nil {
			c.err = unavailable(fmt.Sprintf("reserving a call for session %q", c.session), err)
		} else {
			c.state, c.err = states[i].state, states[i].err
		}
		if c.abandoned && c.err == nil {
			giveBack = append(giveBack, c.session)
		}
		close(c.done)
	}
	r.mu.Unlock()
	// A caller that gave up while its slot was being taken never
	// runs its call; the slot goes back. If that fails, the session is
	// over-counted by one, never under.
	for _, session := range giveBack {
		_ = s.Release(ctx, session)
	}
}

// A reserved is one session's answer in a batch.
type reserved struct {
	state budget.State
	err   error
}

// reserveAll takes a slot for each element of sessions, in one
// transaction, and answers for each as if they had come one at a time,
// in order.
func (s *BudgetStore) reserveAll(ctx context.Context, sessions []string) ([]reserved, error) {
	if len(sessions) == 1 {
		st, err := s.reserveOne(ctx, sessions[0])
		return []reserved{{st, err}}, nil
	}
	return s.reserveMany(ctx, sessions)
}

// reserveOne takes one slot with one statement: the UPDATE's WHERE clause
// is the check, which PostgreSQL makes again on the row's newest version
// when concurrent updates queue on it. Only a refusal costs a second
// statement, to say why.
func (s *BudgetStore) reserveOne(ctx context.Context, session string) (budget.State, error) {
	for {
		st, err := scanState(s.db.pool.QueryRow(ctx, `UPDATE agentsec_budgets SET calls_used = calls_used + 1
			WHERE session = $1 AND calls_used < call_limit AND tokens_used < token_limit
			RETURNING `+stateColumns, session))
		if err == nil {
			return st, nil
		}
		if !noRows(err) {
			return budget.State{}, unavailable(fmt.Sprintf("reserving a call for session %q", session), err)
		}
		st, err = s.Get(ctx, session)
		if err != nil {
			return budget.State{}, err
		}
		if !st.Allows() {
			return st, &budget.ExceededError{Session: session, State: st}
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
			coalesce(l.tokens_used < l.token_limit AND l.calls_used + req.k <= l.call_limit, false) AS taken,
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
func (s *BudgetStore) reserveMany(ctx context.Context, sessions []string) ([]reserved, error) {
	rows, err := s.db.pool.Query(ctx, reserveLocked, sessions)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return readReserved(rows, sessions)
}

// readReserved reads the answers of reserveLocked, one per element. They
// count only if the statement, and so its commit, succeeded.
func readReserved(rows pgx.Rows, sessions []string) ([]reserved, error) {
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
