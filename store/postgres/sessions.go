package postgres

import (
	"context"
	"fmt"
	"time"
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

// TouchSession marks a session used now, unless it is gone or has been
// untouched for longer than idle.
func (s *SessionStore) TouchSession(ctx context.Context, id string, idle time.Duration) (bool, error) {
	tag, err := s.db.pool.Exec(ctx, `UPDATE agentsec_sessions SET last_active = now()
		WHERE id = $1 AND last_active > now() - $2::interval`, id, idle)
	if err != nil {
		return false, unavailable(fmt.Sprintf("touching session %q", id), err)
	}
	return tag.RowsAffected() == 1, nil
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
