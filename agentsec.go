// Package agentsec is the security stack for AI agents: a trust gate, a
// budget enforcer and a tamper-evident audit log, in one install.
//
// A Stack combines the three. Its Guard method runs one governed tool call
// from start to end — trust check, atomic budget reservation, the call,
// token accounting and the audit record — and fails closed: a call whose
// decision cannot be recorded is denied. The Stack's fields expose each
// part on its own for callers that want the steps one by one.
//
// The parts live in their own packages: trust (ladders, policies, the
// gate), budget (limits, the enforcer, its stores) and audit (records, the
// log, its stores).
package agentsec

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/budget"
	"github.com/agentsec/agentsec/store/sqlite"
	"github.com/agentsec/agentsec/trust"
)

// Config configures a Stack. The zero value is not valid: a Stack needs
// at least a budget and an audit namespace.
type Config struct {
	TrustGate TrustGateConfig
	Budget    BudgetConfig
	// AuditNamespace is stamped on every record this Stack appends.
	AuditNamespace string
	// Audit says where the audit log is kept and how it is signed. The
	// zero value keeps it in memory, unsigned.
	Audit AuditConfig
	// Observer, if set, is told of every decision the Stack settles.
	Observer Observer
	// Version names this configuration — agentsec serve uses the SHA-256
	// of agentsec.yaml — and is stamped on the record of every call the
	// trust gate decides under it, as its "config" attribute, so that
	// each record says which configuration decided it (see Stack.Reload).
	// Empty stamps nothing.
	Version string
}

// AuditConfig configures the audit log.
type AuditConfig struct {
	// Path keeps the log in the SQLite database at Path, created on first
	// use. A durable log must be signed: Path requires SignerKey.
	Path string
	// Store keeps the log in a store of the caller's. Set Path or Store,
	// not both; with neither the log is kept in memory.
	Store audit.Store
	// SignerKey signs the log's checkpoints: the contents of a key file
	// made by "agentsec keygen".
	SignerKey string
	// CheckpointEvery, CheckpointInterval and CheckpointFile are as in
	// audit.Options: a checkpoint is signed after that many records, at
	// least that often while records arrive, and on Close, and each is
	// also written to CheckpointFile, which should live away from the log.
	CheckpointEvery    uint64
	CheckpointInterval time.Duration
	CheckpointFile     string
	// Logger receives the log's failures — with their cause, once when
	// appends or checkpoints start failing and in a summary at most every
	// audit.FailureReportInterval while they go on — and its recoveries.
	// While the log is failed Guard denies every call; this says why.
	// Nil means slog.Default().
	Logger *slog.Logger
}

// TrustGateConfig configures the trust gate.
type TrustGateConfig struct {
	// Ladder is the ladder the levels are on. Nil means
	// trust.DefaultLadder(): public < verified < privileged.
	Ladder *trust.Ladder
	// ToolName and RequiredLevel form a one-rule policy: ToolName
	// requires RequiredLevel. Set both or neither.
	ToolName      string
	RequiredLevel string
	// Rules map further tools or glob patterns to required levels.
	Rules []trust.Rule
	// DefaultLevel is required by tools no rule covers. Empty means such
	// tools are denied.
	DefaultLevel string
	// Agents are the operator's level assignments in force from the
	// start. Each is recorded in the audit log as a "trust.assign" event.
	Agents []trust.Assignment
}

// BudgetConfig configures the budget enforcer. Every session gets these
// limits when its budget is created on first use.
type BudgetConfig struct {
	// TokenLimit is the most tokens a session may use: calls are allowed
	// while fewer have been used, so the call that crosses it completes.
	TokenLimit int64
	// CallLimit is the most calls a session may make, exactly.
	CallLimit int64
	// CallTokenLimit, if positive, is the most tokens one call's result
	// may count: a bigger result is withheld, and the call is recorded as
	// over budget. With it a session's tokens can pass TokenLimit by less
	// than CallTokenLimit, however many calls run at once (see Guard).
	CallTokenLimit int64
	// Store keeps the budgets. Nil means an in-memory store.
	Store budget.Store
}

// A Stack is a trust gate, a budget enforcer and an audit log working
// together. It is safe for concurrent use.
type Stack struct {
	TrustGate *TrustGate
	Budget    *budget.Enforcer
	Audit     *audit.Log

	callTokenLimit int64 // BudgetConfig.CallTokenLimit; 0 for none
	// lazyCommits is set when the budget store's commits are made
	// durable by the audit log's appends (budget.LazyCommitter): a call's
	// token count then waits for no disk of its own, since its record,
	// appended before its answer, takes the count with it.
	lazyCommits bool
	observer    Observer
	// stopSync stops the reading of the trust changes other replicas
	// record, on a shared store; nil otherwise.
	stopSync func()
}

// Audit events a Stack records.
const (
	EventToolCall = "tool.call"
	// EventToolResult records a result delivered after its call's own
	// record: a task's result (DeliverResult).
	EventToolResult  = "tool.result"
	EventTrustAssign = "trust.assign"
	EventTrustRevoke = "trust.revoke"
)

// AttrConfig is the attribute that names, on a call's record, the Version
// of the configuration whose trust gate decided it.
const AttrConfig = "config"

// New returns a Stack built from cfg. Every setting is checked here: an
// unknown level, an empty agent id, a malformed tool pattern, a
// non-positive limit or an empty namespace is an error, as is a failure to
// record the configured assignments.
func New(cfg Config) (*Stack, error) {
	ctx := context.Background()
	if cfg.AuditNamespace == "" {
		return nil, errors.New("agentsec: config: AuditNamespace is empty; name the application whose decisions are logged")
	}
	gate, err := newGate(cfg.TrustGate)
	if err != nil {
		return nil, err
	}

	budgetStore := cfg.Budget.Store
	if budgetStore == nil {
		budgetStore = budget.NewMemoryStore()
	}
	if cfg.Budget.CallTokenLimit < 0 {
		return nil, fmt.Errorf("agentsec: config: Budget.CallTokenLimit must not be negative, got %d", cfg.Budget.CallTokenLimit)
	}
	enforcer, err := budget.NewEnforcer(budgetStore, budget.Limits{Tokens: cfg.Budget.TokenLimit, Calls: cfg.Budget.CallLimit})
	if err != nil {
		return nil, fmt.Errorf("agentsec: config: %w", err)
	}

	log, err := openAuditLog(ctx, cfg.AuditNamespace, cfg.Audit)
	if err != nil {
		return nil, err
	}

	logger := cmp.Or(cfg.Audit.Logger, slog.Default())
	configured := gate.Assignments()
	s := &Stack{TrustGate: &TrustGate{log: log, replay: newReplayState(configured, logger)},
		Budget: enforcer, Audit: log, callTokenLimit: cfg.Budget.CallTokenLimit, observer: cfg.Observer}
	s.TrustGate.current.Store(&gateConfig{gate: gate, version: cfg.Version})
	if lazy, ok := budgetStore.(budget.LazyCommitter); ok && lazy.SyncedBy(log.Store()) {
		s.lazyCommits = true
	}
	for _, a := range configured {
		rec := assignmentRecord(a, sourceConfig)
		err := s.TrustGate.seal(&rec, configName(a))
		if err == nil {
			_, err = log.Log(ctx, rec)
		}
		if err != nil {
			log.Close()
			return nil, fmt.Errorf("agentsec: recording configured assignments: %w", err)
		}
	}
	// The runtime changes recorded since, replayed over this file; those
	// made over a line the file has dropped end for good.
	err = s.TrustGate.Sync(ctx)
	if err == nil {
		err = s.TrustGate.endStale(ctx, &s.TrustGate.replay)
	}
	if err != nil {
		log.Close()
		return nil, err
	}
	if _, shared := log.Store().(audit.SharedStore); shared && log.CanSign() {
		s.stopSync = s.TrustGate.follow(logger)
	}
	return s, nil
}

// openAuditLog opens the log cfg describes.
func openAuditLog(ctx context.Context, namespace string, cfg AuditConfig) (*audit.Log, error) {
	opts := audit.Options{
		Namespace:          namespace,
		CheckpointEvery:    cfg.CheckpointEvery,
		CheckpointInterval: cfg.CheckpointInterval,
		CheckpointFile:     cfg.CheckpointFile,
		Logger:             cfg.Logger,
	}
	if cfg.SignerKey != "" {
		var err error
		if opts.Signer, opts.Verifier, err = audit.NewSigner(strings.TrimSpace(cfg.SignerKey)); err != nil {
			return nil, fmt.Errorf("agentsec: config: Audit.SignerKey: %w", err)
		}
	}
	store := cfg.Store
	switch {
	case cfg.Path != "" && cfg.Store != nil:
		return nil, errors.New("agentsec: config: set Audit.Path or Audit.Store, not both")
	case cfg.Path != "" && cfg.SignerKey == "":
		return nil, errors.New("agentsec: config: Audit.Path needs Audit.SignerKey; make a key with 'agentsec keygen'")
	case cfg.Path != "":
		// audit.NewLog checks the checkpoint destination too; checking it
		// first here keeps a bad one from creating the database.
		if cfg.CheckpointFile != "" {
			if err := audit.CheckCheckpointFile(cfg.CheckpointFile); err != nil {
				return nil, fmt.Errorf("agentsec: config: Audit.CheckpointFile: %w", err)
			}
		}
		var err error
		if store, err = sqlite.Open(ctx, cfg.Path, sqlite.Options{Create: true}); err != nil {
			return nil, fmt.Errorf("agentsec: %w", err)
		}
	case store == nil:
		store = audit.NewMemoryStore()
	}
	log, err := audit.NewLog(ctx, store, opts)
	if err != nil {
		if cfg.Path != "" {
			store.Close()
		}
		return nil, fmt.Errorf("agentsec: opening audit log: %w", err)
	}
	return log, nil
}

// assignmentRecord describes an assignment change for the audit log.
func assignmentRecord(a trust.Assignment, source string) audit.Record {
	rec := audit.Record{Event: EventTrustAssign, Agent: a.Agent, Scope: a.Scope,
		AssignedLevel: a.Level, Attrs: map[string]string{"source": source}}
	if !a.Expires.IsZero() {
		rec.Attrs["expires"] = a.Expires.UTC().Format(time.RFC3339Nano)
	}
	return rec
}

// Close closes the audit log and the budget store.
func (s *Stack) Close() error {
	if s.stopSync != nil {
		s.stopSync()
	}
	return errors.Join(s.Audit.Close(), s.Budget.Store().Close())
}
