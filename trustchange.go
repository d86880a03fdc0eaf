package agentsec

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// Trust changes made at run time are kept in the audit log, and only
// there: the log is what every replica shares, what survives a restart,
// and what an outsider verifies. A Stack starts from the configuration's
// assignments and replays, in log order, the changes recorded since; a
// Stack on a shared store (PostgreSQL) replays its replicas' changes as
// they are recorded, every trustSyncInterval.
//
// Whoever can write the database can append a record that looks like a
// change, so a change counts only if the log's own key signed it
// (audit.Log.SignStatement): its agent, scope, level, expiry, the
// configuration it was made over, who made it and why, and an id of its
// own. A copy of a signed change, appended again later to undo what came
// after it, has an id already seen and is ignored.
//
// A change is made over the configuration's assignment for its agent and
// scope, which its record names ("configured"). It holds while the
// configuration keeps that assignment; once the file assigns the agent
// otherwise in that scope, the file's new assignment is in force, as it
// was the operator's latest word. So the assignments in force are a
// function of the configuration and the log alone: every replica with the
// same file computes the same ones, at every start.

// trustSyncInterval is how often a Stack on a shared store reads the
// trust changes its replicas recorded.
const trustSyncInterval = 250 * time.Millisecond

// trustChangeKind is the kind of statement a trust change's signature is.
const trustChangeKind = "trust-change/v1"

// Attributes of a trust change's record.
const (
	attrChangeID  = "change_id"
	attrConfig    = "configured"
	attrOperator  = "operator"
	attrSignature = "signature"
	attrSource    = "source"
	attrExpires   = "expires"
	attrPrevious  = "previous"
)

// Sources of a trust change, in its record's "source" attribute.
const (
	sourceConfig  = "config" // the configuration's assignments, recorded at each start
	sourceRuntime = "api"    // a change made at run time, through TrustGate
)

// A Change says who changes an agent's trust level at run time, and why.
// Both go into the change's audit record.
type Change struct {
	// Operator names who made the change: an operator's id, or empty for
	// a program using the library.
	Operator string
	// Reason is why, in the operator's words.
	Reason string
}

// check bounds a Change, so that its record can always be written: its
// operator as an agent id, its reason as a call's.
func (c Change) check() error {
	switch {
	case len(c.Operator) > maxIDLen:
		return fmt.Errorf("agentsec: a change's operator id is longer than %d bytes", maxIDLen)
	case len(c.Reason) > maxReasonLen:
		return fmt.Errorf("agentsec: a change's reason is longer than %d bytes", maxReasonLen)
	case !utf8.ValidString(c.Operator) || !utf8.ValidString(c.Reason):
		return errors.New("agentsec: a change's operator id and reason must be valid UTF-8")
	}
	return nil
}

// signedChange is what a trust change's signature covers: every field of
// its record that says what the change does, and who made it and why.
type signedChange struct {
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	Event     string `json:"event"`
	Agent     string `json:"agent"`
	Scope     string `json:"scope"`
	Level     string `json:"level"`
	Expires   string `json:"expires"`
	Config    string `json:"configured"`
	Source    string `json:"source"`
	Operator  string `json:"operator"`
	Reason    string `json:"reason"`
	// Reload is the reload a change of the configuration's belongs to,
	// so that it can't be passed off as a start's; absent otherwise,
	// as in changes signed before it was signed.
	Reload string `json:"reload,omitempty"`
}

// changeStatement returns the bytes a trust change's signature signs.
func changeStatement(rec *audit.Record) []byte {
	data, err := json.Marshal(signedChange{Namespace: rec.Namespace, ID: rec.Attrs[attrChangeID],
		Event: rec.Event, Agent: rec.Agent, Scope: rec.Scope, Level: rec.AssignedLevel,
		Expires: rec.Attrs[attrExpires], Config: rec.Attrs[attrConfig], Source: rec.Attrs[attrSource],
		Operator: rec.Attrs[attrOperator], Reason: rec.Reason, Reload: rec.Attrs[attrReload]})
	if err != nil {
		panic(err) // strings only: it can't fail
	}
	return data
}

// changeStatementWithoutReload is the statement a reload's change was
// signed with before the reload id was part of it: its signature verifies
// only so, and such a change (written by an older version, whose reloads
// were not closed by a signed record) takes effect where it stands.
func changeStatementWithoutReload(rec *audit.Record) []byte {
	r := *rec
	r.Attrs = maps.Clone(rec.Attrs)
	delete(r.Attrs, attrReload)
	return changeStatement(&r)
}

// assignKey names an assignment: an agent in a scope.
type assignKey struct{ agent, scope string }

// configName describes a configured assignment as a change's record names
// it: a level, or a level and its expiry. A level name has no spaces or
// parentheses, so neither can be taken for the other, or for noConfig.
func configName(a trust.Assignment) string {
	if a.Expires.IsZero() {
		return a.Level
	}
	return a.Level + " until " + a.Expires.UTC().Format(time.RFC3339Nano)
}

// noConfig is a change's "configured" when the configuration assigns its
// agent nothing in its scope.
const noConfig = "(none)"

// replayState is what a TrustGate remembers of the changes it applied.
type replayState struct {
	// configured are the configuration's assignments, by agent and scope:
	// what runtime changes are made over.
	configured map[assignKey]trust.Assignment
	// next is the first log position not yet read for changes.
	next uint64
	// seen holds the ids of the changes read or made.
	seen map[string]bool
	// last is the log position of the latest change read or made for
	// each key, from the configuration or at run time.
	last map[assignKey]uint64
	// pending holds, by reload id, the signed changes of reloads whose
	// closing record is not read yet — for good, if the reload failed.
	pending map[string][]audit.Record
	// inForce is, for each key, the runtime change that holds while the
	// configuration keeps the assignment it was made over. A change of
	// the configuration's assignment recorded after it (a "config"
	// change with another value) ends it for good: putting the file's
	// old line back does not bring it back.
	inForce map[assignKey]*audit.Record
	// forged counts the records ignored as not signed, to bound the
	// reports of a flood of them.
	forged int
	logger *slog.Logger
}

// newReplayState starts from the configuration's assignments.
func newReplayState(configured []trust.Assignment, logger *slog.Logger) replayState {
	r := replayState{configured: map[assignKey]trust.Assignment{}, seen: map[string]bool{},
		last: map[assignKey]uint64{}, inForce: map[assignKey]*audit.Record{},
		pending: map[string][]audit.Record{}, logger: logger}
	for _, a := range configured {
		r.configured[assignKey{a.Agent, a.Scope}] = a
	}
	return r
}

// config names the configuration's assignment for k.
func (r *replayState) config(k assignKey) string {
	if a, ok := r.configured[k]; ok {
		return configName(a)
	}
	return noConfig
}

// maxForgedReports bounds the records a replay reports as not signed.
const maxForgedReports = 20

// reportForged reports a record the replay ignores because the log's key
// did not sign it, or because it does not decode.
func (r *replayState) reportForged(msg string, args ...any) {
	r.forged++
	switch {
	case r.forged <= maxForgedReports:
		r.logger.Error(msg+". Someone who can write the database may have added it: run 'agentsec audit verify'", args...)
	case r.forged == maxForgedReports+1:
		r.logger.Error("agentsec: more trust changes in the audit log are not agentsec's; they are ignored, and not reported one by one")
	}
}

// AssignBy records a in the audit log as a "trust.assign" event made by
// by, and then puts it into force. It returns the record. An invalid
// assignment or change is an error and is neither recorded nor applied;
// if the record cannot be written, the assignment is not applied either.
//
// The record names the level the agent held before in the "previous"
// attribute, if it held one in that scope. On a signed log the change
// lasts: it is in force after a restart, and on every replica sharing
// the log, until changed again or until the configuration's assignment
// for the agent and scope changes.
func (g *TrustGate) AssignBy(ctx context.Context, a trust.Assignment, by Change) (audit.Record, error) {
	if err := by.check(); err != nil {
		return audit.Record{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gate := g.live().gate
	now := time.Now()
	if err := gate.ValidateAt(a, now); err != nil {
		return audit.Record{}, err
	}
	rec := assignmentRecord(a, sourceRuntime)
	if old, ok := gate.Assignment(a.Agent, a.Scope); ok {
		rec.Attrs[attrPrevious] = old.Level
	}
	logged, err := g.record(ctx, rec, by)
	if err != nil {
		return audit.Record{}, fmt.Errorf("agentsec: assignment not applied: %w", err)
	}
	return logged, gate.AssignAt(a, now)
}

// RevokeBy records the removal of agent's assignment in scope as a
// "trust.revoke" event made by by, and then removes it; it returns the
// record. Revoking an assignment that does not exist is an error wrapping
// ErrNoAssignment and is not recorded. Like AssignBy's, a revocation on a
// signed log lasts.
func (g *TrustGate) RevokeBy(ctx context.Context, agent, scope string, by Change) (audit.Record, error) {
	if err := by.check(); err != nil {
		return audit.Record{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gate := g.live().gate
	old, ok := gate.Assignment(agent, scope)
	if !ok {
		return audit.Record{}, fmt.Errorf("agentsec: agent %q has %w in scope %q to revoke", agent, ErrNoAssignment, scope)
	}
	rec := audit.Record{Event: EventTrustRevoke, Agent: agent, Scope: scope,
		Attrs: map[string]string{attrSource: sourceRuntime, attrPrevious: old.Level}}
	logged, err := g.record(ctx, rec, by)
	if err != nil {
		return audit.Record{}, fmt.Errorf("agentsec: revocation not applied: %w", err)
	}
	gate.Revoke(agent, scope)
	return logged, nil
}

// ErrNoAssignment is returned, wrapped, by RevokeBy for an agent with no
// assignment in the scope.
var ErrNoAssignment = errors.New("no assignment")

// record completes a change's record — who and why, and its seal — and
// appends it. The caller holds g.mu and applies the change once record
// returns nil.
func (g *TrustGate) record(ctx context.Context, rec audit.Record, by Change) (audit.Record, error) {
	rec.Reason = by.Reason
	if by.Operator != "" {
		rec.Attrs[attrOperator] = by.Operator
	}
	k := assignKey{rec.Agent, rec.Scope}
	if err := g.seal(&rec, g.replay.config(k)); err != nil {
		return audit.Record{}, err
	}
	logged, err := g.log.Log(ctx, rec)
	if err != nil {
		return audit.Record{}, err
	}
	g.replay.seen[rec.Attrs[attrChangeID]] = true
	g.replay.last[k] = logged.Seq
	g.replay.inForce[k] = &logged
	return logged, nil
}

// seal gives a trust change's record its id, the configuration's
// assignment it is made over (for a runtime change) or puts in force
// (for the configuration's own), and, on a signed log, its signature.
func (g *TrustGate) seal(rec *audit.Record, configured string) error {
	var id [16]byte
	rand.Read(id[:])
	rec.Namespace = g.log.Namespace()
	rec.Attrs[attrChangeID] = hex.EncodeToString(id[:])
	rec.Attrs[attrConfig] = configured
	if !g.log.CanSign() {
		return nil
	}
	sig, err := g.log.SignStatement(trustChangeKind, changeStatement(rec))
	if err != nil {
		return err
	}
	rec.Attrs[attrSignature] = base64.StdEncoding.EncodeToString(sig)
	return nil
}

// Sync puts into force the trust changes recorded in the log since the
// last Sync, in log order — on a shared store, those other Stacks made.
// A Stack on a shared store syncs by itself, several times a second; New
// syncs once, to put the changes made before it started back into force.
// A change the log's key did not sign is ignored, and reported to the
// audit log's Logger. A log without a signing key keeps no changes across
// restarts, and Sync does nothing.
func (g *TrustGate) Sync(ctx context.Context) error {
	if !g.log.CanSign() {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.syncInto(ctx, g.live().gate, &g.replay)
}

// syncInto applies to gate the changes recorded from rs.next on. The
// caller holds g.mu.
func (g *TrustGate) syncInto(ctx context.Context, gate *trust.Gate, rs *replayState) error {
	store := g.log.Store()
	size, err := store.Size(ctx)
	if err != nil {
		return fmt.Errorf("agentsec: reading trust changes: %w", err)
	}
	if size <= rs.next {
		return nil
	}
	var changes []audit.Record
	for _, event := range []string{EventTrustAssign, EventTrustRevoke, EventConfigReload} {
		err := audit.QueryEach(ctx, store, audit.Filter{Namespace: g.log.Namespace(), Event: event}, rs.next, size,
			func(r *audit.Record) error {
				changes = append(changes, *r)
				return nil
			},
			func(seq uint64, err error) {
				rs.reportForged("agentsec: a record among the trust changes of the audit log does not decode; it is ignored",
					"seq", seq, "err", err)
			})
		if err != nil {
			return fmt.Errorf("agentsec: reading trust changes: %w", err)
		}
	}
	slices.SortFunc(changes, func(a, b audit.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	for i := range changes {
		g.apply(gate, rs, &changes[i])
	}
	rs.next = size
	return nil
}

// apply reads a trust change from the log, in log order: a runtime
// change is put into force while the configuration keeps the assignment
// it was made over; a change of the configuration's assignment ends the
// runtime change made over another. Only changes this log's key signed
// count, each once.
func (g *TrustGate) apply(gate *trust.Gate, rs *replayState, rec *audit.Record) {
	if rec.Event == EventConfigReload {
		g.close(gate, rs, rec)
		return
	}
	source := rec.Attrs[attrSource]
	id := rec.Attrs[attrChangeID]
	if id == "" || source != sourceRuntime && source != sourceConfig {
		return // recorded before changes were signed: no change counted on it
	}
	sig, err := base64.StdEncoding.DecodeString(rec.Attrs[attrSignature])
	signedReload := err == nil && g.log.VerifyStatement(trustChangeKind, changeStatement(rec), sig)
	// A reload's change signed before its reload id was (an older
	// version's) verifies without it, and took effect as it was written.
	signedBefore := !signedReload && err == nil && rec.Attrs[attrReload] != "" &&
		g.log.VerifyStatement(trustChangeKind, changeStatementWithoutReload(rec), sig)
	if !signedReload && !signedBefore {
		rs.reportForged("agentsec: a trust change in the audit log is not signed by the log's key; it is ignored",
			"seq", rec.Seq, "event", rec.Event, "agent", rec.Agent, "scope", rec.Scope, "level", rec.AssignedLevel)
		return
	}
	if rs.seen[id] {
		return // a copy, appended again to undo what came after it, or one of ours
	}
	rs.seen[id] = true
	if reload := rec.Attrs[attrReload]; source == sourceConfig && reload != "" && signedReload {
		// A reload's change waits for its signed closing record: a reload
		// refused partway never took effect.
		rs.pending[reload] = append(rs.pending[reload], *rec)
		return
	}
	g.applyChange(gate, rs, rec)
}

// close puts into force the changes of the reload rec closes, if the log's
// key signed it.
func (g *TrustGate) close(gate *trust.Gate, rs *replayState, rec *audit.Record) {
	reload := rec.Attrs[attrReload]
	changes, ok := rs.pending[reload]
	if !ok {
		return
	}
	sig, err := base64.StdEncoding.DecodeString(rec.Attrs[attrSignature])
	if err != nil || !g.log.VerifyStatement(reloadKind, reloadStatement(rec.Namespace, reload), sig) {
		rs.reportForged("agentsec: a reload's closing record in the audit log is not signed by the log's key; its changes are ignored",
			"seq", rec.Seq, "reload", reload)
		return
	}
	delete(rs.pending, reload)
	for i := range changes {
		g.applyChange(gate, rs, &changes[i])
	}
}

// applyChange puts a signed change read from the log into force, as
// apply says.
func (g *TrustGate) applyChange(gate *trust.Gate, rs *replayState, rec *audit.Record) {
	k := assignKey{rec.Agent, rec.Scope}
	if last, ok := rs.last[k]; ok && rec.Seq <= last {
		return
	}
	rs.last[k] = rec.Seq
	if rec.Attrs[attrSource] == sourceConfig {
		if r := rs.inForce[k]; r != nil && r.Attrs[attrConfig] != rec.Attrs[attrConfig] {
			// The file assigned the agent otherwise: its word is the newer.
			delete(rs.inForce, k)
			g.restore(gate, rs, k)
		}
		return
	}
	rs.inForce[k] = rec
	if rec.Attrs[attrConfig] != rs.config(k) {
		g.restore(gate, rs, k) // made over another file than this one
		return
	}
	switch rec.Event {
	case EventTrustAssign:
		a := trust.Assignment{Agent: rec.Agent, Scope: rec.Scope, Level: rec.AssignedLevel}
		if s := rec.Attrs[attrExpires]; s != "" {
			var err error
			if a.Expires, err = time.Parse(time.RFC3339Nano, s); err != nil {
				rs.logger.Error("agentsec: a trust change's expiry is malformed; it is ignored", "seq", rec.Seq, "expires", s)
				return
			}
		}
		// As of when it was made: an assignment that has expired since
		// is in force all the same, and holds the lowest level.
		if err := assignAsOf(gate, a, rec.Time); err != nil {
			rs.logger.Error("agentsec: a recorded trust change can't be applied; it is ignored", "seq", rec.Seq, "err", err)
		}
	case EventTrustRevoke:
		gate.Revoke(rec.Agent, rec.Scope)
	}
}

// restore puts the configuration's assignment for k back into force, or
// none if it has none.
func (g *TrustGate) restore(gate *trust.Gate, rs *replayState, k assignKey) {
	a, ok := rs.configured[k]
	if !ok {
		gate.Revoke(k.agent, k.scope)
		return
	}
	if err := assignAsOf(gate, a, time.Now()); err != nil {
		rs.logger.Error("agentsec: the configuration's assignment can't be put back", "agent", k.agent, "scope", k.scope, "err", err)
	}
}

// assignAsOf assigns a as of at, or, if a has expired by then, as of just
// before it expired: an expired assignment holds the lowest level.
func assignAsOf(gate *trust.Gate, a trust.Assignment, at time.Time) error {
	if !a.Expires.IsZero() && !at.Before(a.Expires) {
		at = a.Expires.Add(-time.Nanosecond)
	}
	return gate.AssignAt(a, at)
}

// endStale records, for each runtime change the configuration no longer
// keeps the assignment of, a change of the configuration's own that ends
// it for good — so that putting the file's old line back later does not
// bring it back. New and Reload call it once they have replayed the log
// over the file they read; the caller holds g.mu (or owns rs alone).
func (g *TrustGate) endStale(ctx context.Context, rs *replayState) error {
	if !g.log.CanSign() {
		return nil
	}
	keys := slices.SortedFunc(maps.Keys(rs.inForce), func(a, b assignKey) int {
		return cmp.Or(cmp.Compare(a.agent, b.agent), cmp.Compare(a.scope, b.scope))
	})
	for _, k := range keys {
		r := rs.inForce[k]
		if r.Attrs[attrConfig] == rs.config(k) {
			continue
		}
		rec := audit.Record{Event: EventTrustRevoke, Agent: k.agent, Scope: k.scope,
			Attrs: map[string]string{attrSource: sourceConfig}}
		if a, ok := rs.configured[k]; ok {
			rec = assignmentRecord(a, sourceConfig)
		}
		rec.Reason = "the configuration assigns otherwise than when the runtime change was made"
		if err := g.seal(&rec, rs.config(k)); err != nil {
			return err
		}
		logged, err := g.log.Log(ctx, rec)
		if err != nil {
			return fmt.Errorf("agentsec: recording the configuration's assignments: %w", err)
		}
		rs.seen[rec.Attrs[attrChangeID]] = true
		rs.last[k] = logged.Seq
		delete(rs.inForce, k)
	}
	return nil
}

// follow syncs the gate every trustSyncInterval until the returned
// function is called, which waits for it to stop. Failures are reported
// to logger when they begin and when they end.
func (g *TrustGate) follow(logger *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(trustSyncInterval)
		defer tick.Stop()
		failing := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			sctx, scancel := context.WithTimeout(ctx, 10*trustSyncInterval)
			err := g.Sync(sctx)
			scancel()
			switch {
			case err != nil && !failing && ctx.Err() == nil:
				failing = true
				logger.Warn("agentsec: the trust changes other replicas record can't be read; they take effect here once they can", "err", err)
			case err == nil && failing:
				failing = false
				logger.Info("agentsec: reading the trust changes other replicas record again")
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
