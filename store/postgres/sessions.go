package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SessionStore keeps the MCP sessions of a gateway's replicas, so that
// any replica can serve a session another began (mcpgate.SessionStore),
// and forgets the budgets of sessions that ended.
//
// A session that ended — deleted by its client, or idle for longer than
// the idle timeout — is gone for LoadSession and RefreshSessions at once,
// but its row, and its budget, stay for one more idle timeout: a replica
// that still holds the session learns it ended at its next refresh, and
// until then charges its calls to the budget the session had, never to a
// fresh one. PruneSessions then deletes both.
type SessionStore struct{ ref }

// SaveSession records a session's owner (mcpgate.SessionStore says what
// it holds; the column is named agent, which it begins with) and
// initialize parameters. A session is saved once; saving it again keeps
// what was first saved.
func (s *SessionStore) SaveSession(ctx context.Context, id, owner string, init []byte) error {
	_, err := s.db.pool.Exec(ctx, `INSERT INTO agentsec_sessions (id, agent, init) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO NOTHING`, id, owner, init)
	if err != nil {
		return unavailable("saving a session", err)
	}
	return nil
}

// LoadSession returns a saved session's owner and initialize parameters,
// unless it has been untouched for longer than idle.
func (s *SessionStore) LoadSession(ctx context.Context, id string, idle time.Duration) (owner string, init []byte, found bool, err error) {
	err = s.db.pool.QueryRow(ctx, `SELECT agent, init FROM agentsec_sessions
		WHERE id = $1 AND ended IS NULL AND last_active > now() - $2::interval`, id, idle).Scan(&owner, &init)
	if noRows(err) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, unavailable(fmt.Sprintf("loading session %q", id), err)
	}
	return owner, init, true, nil
}

// RefreshSessions marks the sessions of used as used now, unless they are
// gone or have been untouched for longer than idle, and returns those of
// held that are gone or untouched that long: one statement for all.
func (s *SessionStore) RefreshSessions(ctx context.Context, held, used []string, idle time.Duration) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, `WITH touched AS (
			UPDATE agentsec_sessions SET last_active = now()
			WHERE id = ANY ($2::text[]) AND ended IS NULL AND last_active > now() - $3::interval
		)
		SELECT h FROM unnest($1::text[]) AS h WHERE NOT EXISTS (
			SELECT 1 FROM agentsec_sessions s WHERE s.id = h AND s.ended IS NULL AND s.last_active > now() - $3::interval)`,
		held, used, idle)
	if err != nil {
		return nil, unavailable("refreshing sessions", err)
	}
	gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, unavailable("refreshing sessions", err)
	}
	return gone, nil
}

// DeleteSession ends a session: no replica loads it again, and those
// that hold it learn so at their next refresh.
func (s *SessionStore) DeleteSession(ctx context.Context, id string) error {
	if _, err := s.db.pool.Exec(ctx, `UPDATE agentsec_sessions SET ended = now() WHERE id = $1 AND ended IS NULL`, id); err != nil {
		return unavailable(fmt.Sprintf("deleting session %q", id), err)
	}
	return nil
}

// PruneSessions forgets the sessions that ended, or went idle, more than
// an idle timeout ago, with their budgets, in one statement.
func (s *SessionStore) PruneSessions(ctx context.Context, idle time.Duration) error {
	if _, err := s.db.pool.Exec(ctx, `WITH gone AS (
			DELETE FROM agentsec_sessions
			WHERE ended <= now() - $1::interval OR last_active <= now() - 2 * $1::interval
			RETURNING id
		)
		DELETE FROM agentsec_budgets b USING gone WHERE b.session = gone.id`, idle); err != nil {
		return unavailable("pruning ended sessions", err)
	}
	return nil
}
