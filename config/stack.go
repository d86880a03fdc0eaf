package config

import (
	"fmt"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/trust"
)

// StackConfig returns the library configuration the file describes,
// reading the audit signer key. Load has validated everything it uses.
func (c *Config) StackConfig() (agentsec.Config, error) {
	ladder, err := c.Trust.ladder()
	if err != nil {
		return agentsec.Config{}, fmt.Errorf("config: %w", err)
	}
	sc := agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Ladder:       ladder,
			DefaultLevel: c.Trust.DefaultLevel,
		},
		Budget: agentsec.BudgetConfig{TokenLimit: c.Budget.Tokens, CallLimit: c.Budget.Calls,
			CallTokenLimit: c.Budget.CallTokens},
		AuditNamespace: c.Namespace,
		Version:        c.Version(),
		Audit: agentsec.AuditConfig{
			Path:               c.Path(c.Audit.Path),
			CheckpointEvery:    c.Audit.CheckpointEvery,
			CheckpointInterval: c.Audit.CheckpointInterval,
			CheckpointFile:     c.Path(c.Audit.CheckpointFile),
		},
	}
	for _, r := range c.Trust.Rules {
		sc.TrustGate.Rules = append(sc.TrustGate.Rules, trust.Rule{Tool: r.Tool, Level: r.Level})
	}
	for _, a := range c.Trust.Agents {
		sc.TrustGate.Agents = append(sc.TrustGate.Agents,
			trust.Assignment{Agent: a.ID, Scope: a.Scope, Level: a.Level, Expires: a.Expires})
	}
	if c.Audit.KeyFile != "" {
		if sc.Audit.SignerKey, err = c.signerKey(); err != nil {
			return agentsec.Config{}, fmt.Errorf("config: audit.key_file: %w", err)
		}
	}
	return sc, nil
}
