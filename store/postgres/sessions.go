package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SessionStore keeps the MCP sessions of a gateway's replicas, so that
// any replica can serve a session another began (mcpgate.SessionStore).
type SessionStore struct{ ref }

// SaveSession records a session's agent and initialize parameters. A
// session is saved once; saving it again keeps what was first saved.
func (s *SessionStore) SaveSession(ctx context.Context, id, agent string, init []byte) error {
	_, err := s.db.pool.Exec(ctx, `INSERT INTO agentsec_sessions (id, agent, init) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO NOTHING`, id, agent, init)
	if err != nil {
		return unavailable("saving a session", err)
	}
	return nil
}

// LoadSession returns a saved session's agent and initialize parameters,
// unless it has been untouched for longer than idle.
func (s *SessionStore) LoadSession(ctx context.Context, id string, idle time.Duration) (agent string, init []byte, found bool, err error) {
	err = s.db.pool.QueryRow(ctx, `SELECT agent, init FROM agentsec_sessions
		WHERE id = $1 AND last_active > now() - $2::interval`, id, idle).Scan(&agent, &init)
	if noRows(err) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, unavailable(fmt.Sprintf("loading session %q", id), err)
	}
	return agent, init, true, nil
}

// RefreshSessions marks the sessions of used as used now, unless they are
// gone or have been untouched for longer than idle, and returns those of
// held that are gone or untouched that long: one statement for all.
func (s *SessionStore) RefreshSessions(ctx context.Context, held, used []string, idle time.Duration) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, `WITH touched AS (
			UPDATE agentsec_sessions SET last_active = now()
			WHERE id = ANY ($2::text[]) AND last_active > now() - $3::interval
		)
		SELECT h FROM unnest($1::text[]) AS h WHERE NOT EXISTS (
			SELECT 1 FROM agentsec_sessions s WHERE s.id = h AND s.last_active > now() - $3::interval)`,
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

// DeleteSession forgets a session.
func (s *SessionStore) DeleteSession(ctx context.Context, id string) error {
	if _, err := s.db.pool.Exec(ctx, `DELETE FROM agentsec_sessions WHERE id = $1`, id); err != nil {
		return unavailable(fmt.Sprintf("deleting session %q", id), err)
	}
	return nil
}

// PruneSessions forgets the sessions untouched for longer than idle.
func (s *SessionStore) PruneSessions(ctx context.Context, idle time.Duration) error {
	if _, err := s.db.pool.Exec(ctx, `DELETE FROM agentsec_sessions WHERE last_active <= now() - $1::interval`, idle); err != nil {
		return unavailable("pruning idle sessions", err)
	}
	return nil
}
