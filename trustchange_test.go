package agentsec_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/trust"
)

// trustConfig is a Stack whose log is kept, signed with key, in store —
// shared by every Stack a test opens, one after another, as by restarts.
func trustConfig(store audit.Store, key string, agents ...trust.Assignment) agentsec.Config {
	return agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{
				{Tool: "read", Level: "public"},
				{Tool: "write", Level: "verified"},
				{Tool: "admin.*", Level: "privileged"},
			},
			Agents: agents,
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1000, CallLimit: 1000},
		AuditNamespace: "test",
		Audit:          agentsec.AuditConfig{Store: store, SignerKey: key, CheckpointInterval: -1},
	}
}

func openStack(t *testing.T, cfg agentsec.Config) *agentsec.Stack {
	t.Helper()
	s, err := agentsec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// level returns the level the agent holds in scope, or "" for none.
func level(s *agentsec.Stack, agent, scope string) string {
	return s.TrustGate.Check(agentsec.Request{Agent: agent, Scope: scope, Tool: "read"}).AssignedName()
}

func newKey(t *testing.T) string {
	t.Helper()
	key, _, err := audit.GenerateKey("trust.test")
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Changes made at run time are in force after a restart, recorded with
// who made them and why.
func TestTrustChangesSurviveRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := newKey(t)
	cfg := trustConfig(nil, key, trust.Assignment{Agent: "alice", Level: "verified"},
		trust.Assignment{Agent: "carol", Level: "verified"})
	cfg.Audit.Path = filepath.Join(dir, "audit.db")

	s := openStack(t, cfg)
	rec, err := s.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "bob", Level: "privileged"},
		agentsec.Change{Operator: "ops-1", Reason: "incident 42"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Attrs["operator"] != "ops-1" || rec.Reason != "incident 42" || rec.Attrs["source"] != "api" ||
		rec.Attrs["configured"] != "(none)" || rec.Attrs["signature"] == "" || rec.Attrs["change_id"] == "" {
		t.Errorf("assign record = %+v", rec)
	}
	if _, err := s.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "alice", Level: "privileged", Scope: "ops"}, agentsec.Change{Operator: "ops-1"}); err != nil {
		t.Fatal(err)
	}
	rec, err = s.TrustGate.RevokeBy(ctx, "carol", "", agentsec.Change{Operator: "ops-2", Reason: "left"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Attrs["configured"] != "verified" || rec.Attrs["previous"] != "verified" || rec.Attrs["operator"] != "ops-2" {
		t.Errorf("revoke record = %+v", rec)
	}
	if _, err := s.TrustGate.RevokeBy(ctx, "carol", "", agentsec.Change{}); !errors.Is(err, agentsec.ErrNoAssignment) {
		t.Errorf("revoking twice: %v, want ErrNoAssignment", err)
	}
	want := s.TrustGate.Assignments()
	s.Close()

	for range 2 { // a second restart replays the same changes once more
		s = openStack(t, cfg)
		if got := s.TrustGate.Assignments(); !equalAssignments(got, want) {
			t.Errorf("after a restart: %v, want %v", got, want)
		}
		if level(s, "bob", "") != "privileged" || level(s, "carol", "") != "" || level(s, "alice", "ops") != "privileged" {
			t.Errorf("after a restart: bob %q carol %q alice in ops %q", level(s, "bob", ""), level(s, "carol", ""), level(s, "alice", "ops"))
		}
		if _, err := s.Audit.Verify(ctx); err != nil {
			t.Error(err)
		}
		s.Close()
	}
}

func equalAssignments(a, b []trust.Assignment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Agent != b[i].Agent || a[i].Scope != b[i].Scope || a[i].Level != b[i].Level || !a[i].Expires.Equal(b[i].Expires) {
			return false
		}
	}
	return true
}

// Once the file assigns an agent otherwise, the file's assignment is in
// force: the runtime change was made over the old one.
func TestConfigChangeSupersedesRuntimeChange(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	key := newKey(t)
	s := openStack(t, trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "verified"}, trust.Assignment{Agent: "bob", Level: "public"}))
	for _, a := range []trust.Assignment{{Agent: "alice", Level: "privileged"}, {Agent: "bob", Level: "privileged"}} {
		if err := s.TrustGate.Assign(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	// alice's line changed in the file; bob's did not.
	s = openStack(t, trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"}, trust.Assignment{Agent: "bob", Level: "public"}))
	if level(s, "alice", "") != "public" || level(s, "bob", "") != "privileged" {
		t.Errorf("alice %q (want the file's public), bob %q (want the runtime privileged)", level(s, "alice", ""), level(s, "bob", ""))
	}
	// A change made now, over the new file, holds.
	if err := s.TrustGate.Assign(ctx, trust.Assignment{Agent: "alice", Level: "verified"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStack(t, trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"}, trust.Assignment{Agent: "bob", Level: "public"}))
	if level(s, "alice", "") != "verified" {
		t.Errorf("alice %q, want verified", level(s, "alice", ""))
	}
	// An expiry in the file is part of its assignment.
	s.Close()
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	s = openStack(t, trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public", Expires: exp}, trust.Assignment{Agent: "bob", Level: "public"}))
	if level(s, "alice", "") != "public" {
		t.Errorf("alice %q after her expiry changed in the file, want the file's public", level(s, "alice", ""))
	}
}

// Someone who can write the database can append records that look like
// trust changes. None of them takes effect: not one unsigned, signed with
// another key, edited after signing, or a signed change appended again to
// undo the changes after it.
func TestForgedTrustChangesIgnored(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	key := newKey(t)
	cfg := trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"})
	var logged bytes.Buffer
	var logMu sync.Mutex
	cfg.Audit.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil))

	s := openStack(t, cfg)
	raise, err := s.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "mallory", Level: "privileged"}, agentsec.Change{Operator: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TrustGate.RevokeBy(ctx, "mallory", "", agentsec.Change{Operator: "ops", Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// The forger's log: the same store, no key.
	forger, err := audit.NewLog(ctx, store, audit.Options{Namespace: "test"})
	if err != nil {
		t.Fatal(err)
	}
	otherKey := newKey(t)
	other, err := agentsec.New(trustConfig(audit.NewMemoryStore(), otherKey))
	if err != nil {
		t.Fatal(err)
	}
	signedElsewhere, err := other.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "eve", Level: "privileged"}, agentsec.Change{})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()

	forge := func(rec audit.Record, edit func(*audit.Record)) audit.Record {
		rec.Seq, rec.Time = 0, time.Time{}
		rec.Attrs = maps.Clone(rec.Attrs)
		edit(&rec)
		return rec
	}
	forgeries := map[string]audit.Record{
		"unsigned": forge(raise, func(r *audit.Record) {
			r.Agent, r.Attrs["change_id"] = "eve", "0123"
			delete(r.Attrs, "signature")
		}),
		"bad signature": forge(raise, func(r *audit.Record) {
			r.Agent, r.Attrs["change_id"] = "eve", "4567"
			r.Attrs["signature"] = base64.StdEncoding.EncodeToString(make([]byte, 64))
		}),
		"edited level": forge(raise, func(r *audit.Record) {
			r.Agent = "alice" // signed for mallory
		}),
		"replayed":          forge(raise, func(*audit.Record) {}),
		"signed by another": forge(signedElsewhere, func(*audit.Record) {}),
	}
	for name, rec := range forgeries {
		if _, err := forger.Log(ctx, rec); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	forger.Close()

	s = openStack(t, cfg)
	for _, agent := range []string{"mallory", "eve", "alice"} {
		if d := s.TrustGate.Check(agentsec.Request{Agent: agent, Tool: "admin.x"}); d.Allowed {
			t.Errorf("%s may call admin.x after the forgeries: %v", agent, d)
		}
	}
	if got := level(s, "alice", ""); got != "public" {
		t.Errorf("alice holds %q, want public", got)
	}
	logMu.Lock()
	reports := bytes.Count(logged.Bytes(), []byte("not signed by the log's key"))
	logMu.Unlock()
	if reports != 4 { // all but the replayed copy, whose signature is good
		t.Errorf("%d forgeries reported, want 4:\n%s", reports, logged.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A change that can't be recorded is not applied, nor replayed later.
func TestUnrecordedTrustChangeNotApplied(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 10, 1000)
	f.audit.Fail.Store(true)
	if _, err := f.stack.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "bob", Level: "privileged"}, agentsec.Change{Operator: "ops"}); !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Fatalf("assign with the log failing: %v", err)
	}
	if got := level(f.stack, "bob", ""); got != "public" {
		t.Errorf("bob holds %q, want public", got)
	}
	f.audit.Fail.Store(false)
	if err := f.stack.TrustGate.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := level(f.stack, "bob", ""); got != "public" {
		t.Errorf("bob holds %q after a sync, want public", got)
	}
}

// Changes, syncs and checks at once: the last change recorded is the one
// in force, and the race detector sees no race.
func TestTrustChangesConcurrent(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	key := newKey(t)
	cfg := trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"})
	s := openStack(t, cfg)
	levels := []string{"public", "verified", "privileged"}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				a := trust.Assignment{Agent: "alice", Level: levels[(w+i)%3]}
				if err := s.TrustGate.Assign(ctx, a); err != nil {
					t.Error(err)
					return
				}
				if err := s.TrustGate.Sync(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
		wg.Go(func() {
			for range 500 {
				s.TrustGate.Check(agentsec.Request{Agent: "alice", Tool: "write"})
			}
		})
	}
	wg.Wait()
	page, err := s.Audit.Query(ctx, audit.Filter{Event: agentsec.EventTrustAssign, Agent: "alice", Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	last := page.Records[len(page.Records)-1].AssignedLevel
	if got := level(s, "alice", ""); got != last {
		t.Errorf("alice holds %q, the last change recorded is %q", got, last)
	}
	s.Close()
	s = openStack(t, cfg)
	if got := level(s, "alice", ""); got != last {
		t.Errorf("after a restart alice holds %q, the last change recorded is %q", got, last)
	}
}

// FuzzTrustChangeReplay appends a record that looks like a trust change,
// as someone who can write the database could, and starts a Stack on the
// log: it must start, and nothing its key did not sign may change a level.
func FuzzTrustChangeReplay(f *testing.F) {
	key, _, err := audit.GenerateKey("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(true, "mallory", "", "privileged", "", "(none)", "00ff", "", "api")
	f.Add(true, "alice", "ops", "privileged", "2030-01-01T00:00:00Z", "public", "id", "AAAA", "api")
	f.Add(false, "alice", "", "", "", "public", "id2", "not base64!", "api")
	f.Add(true, "alice", "", "root", "yesterday", "public", "", "", "config")
	f.Fuzz(func(t *testing.T, assign bool, agent, scope, lvl, expires, config, id, sig, source string) {
		ctx := context.Background()
		store := audit.NewMemoryStore()
		forger, err := audit.NewLog(ctx, store, audit.Options{Namespace: "test"})
		if err != nil {
			t.Fatal(err)
		}
		rec := audit.Record{Event: agentsec.EventTrustRevoke, Agent: agent, Scope: scope, AssignedLevel: lvl,
			Attrs: map[string]string{"source": source, "change_id": id, "configured": config, "signature": sig, "expires": expires}}
		if assign {
			rec.Event = agentsec.EventTrustAssign
		}
		if _, err := forger.Log(ctx, rec); err != nil {
			t.Skip("not a record the log takes:", err)
		}
		forger.Close()
		cfg := trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"})
		cfg.Audit.Logger = slog.New(slog.DiscardHandler)
		s, err := agentsec.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got := s.TrustGate.Assignments()
		if len(got) != 1 || got[0].Agent != "alice" || got[0].Level != "public" || got[0].Scope != "" {
			t.Errorf("after an unsigned change, the assignments are %v", got)
		}
	})
}

// Putting the file's old line back does not bring back the runtime
// change the file had replaced — across reloads, across restarts, and
// after the line was dropped for a while.
func TestFileRevertDoesNotReviveRuntimeChange(t *testing.T) {
	ctx := context.Background()
	key := newKey(t)
	for _, path := range []string{"reload", "restart", "dropped"} {
		t.Run(path, func(t *testing.T) {
			store := audit.NewMemoryStore()
			cfg := func(agents ...trust.Assignment) agentsec.Config { return trustConfig(store, key, agents...) }
			public := trust.Assignment{Agent: "bob", Level: "public"}
			s := openStack(t, cfg(public))
			if err := s.TrustGate.Assign(ctx, trust.Assignment{Agent: "bob", Level: "privileged"}); err != nil {
				t.Fatal(err)
			}
			switch path {
			case "reload":
				for _, lv := range []string{"verified", "public"} {
					if _, err := s.Reload(ctx, agentsec.Reload{TrustGate: cfg(trust.Assignment{Agent: "bob", Level: lv}).TrustGate}); err != nil {
						t.Fatal(err)
					}
					if got := level(s, "bob", ""); got != lv {
						t.Errorf("after reloading bob %s: bob holds %q", lv, got)
					}
				}
			case "restart", "dropped":
				middle := []trust.Assignment{{Agent: "bob", Level: "verified"}}
				if path == "dropped" {
					middle = []trust.Assignment{{Agent: "carol", Level: "public"}}
				}
				s.Close()
				s = openStack(t, cfg(middle...))
				if got := level(s, "bob", ""); got != map[string]string{"restart": "verified", "dropped": ""}[path] {
					t.Errorf("with the line changed: bob holds %q", got)
				}
				s.Close()
				s = openStack(t, cfg(public))
			}
			if got := level(s, "bob", ""); got != "public" {
				t.Errorf("with the file's old line back: bob holds %q, want the file's public", got)
			}
			s.Close()
			if s = openStack(t, cfg(public)); level(s, "bob", "") != "public" {
				t.Errorf("after another restart: bob holds %q", level(s, "bob", ""))
			}
		})
	}
}

// A record among the trust changes that does not decode — written by
// someone who can write the database — is reported and read past: the
// Stack still starts, and the signed changes around it hold.
func TestUndecodableTrustRecordSkipped(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	key := newKey(t)
	cfg := trustConfig(store, key, trust.Assignment{Agent: "alice", Level: "public"})
	s := openStack(t, cfg)
	if err := s.TrustGate.Assign(ctx, trust.Assignment{Agent: "bob", Level: "verified"}); err != nil {
		t.Fatal(err)
	}
	bad := s.Audit.Size()
	if err := s.TrustGate.Assign(ctx, trust.Assignment{Agent: "carol", Level: "verified"}); err != nil {
		t.Fatal(err)
	}
	if err := s.TrustGate.Assign(ctx, trust.Assignment{Agent: "dave", Level: "verified"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var logged bytes.Buffer
	var mu sync.Mutex
	cfg.Audit.Store = garbled{Store: store, seq: bad}
	cfg.Audit.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, nil))
	s = openStack(t, cfg)
	if level(s, "bob", "") != "verified" || level(s, "dave", "") != "verified" || level(s, "carol", "") != "" {
		t.Errorf("bob %q, carol %q (garbled), dave %q", level(s, "bob", ""), level(s, "carol", ""), level(s, "dave", ""))
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logged.String(), "does not decode") {
		t.Errorf("the garbled record was not reported:\n%s", logged.String())
	}
}

// garbled serves the entry at seq as bytes that are not a record.
type garbled struct {
	audit.Store
	seq uint64
}

func (s garbled) Scan(ctx context.Context, from, to uint64, fn func(audit.Entry) error) error {
	return s.Store.Scan(ctx, from, to, func(e audit.Entry) error {
		if e.Seq == s.seq {
			e.Data = []byte(`{"agent":"carol","event":"trust.assign","namespace":"test",}`)
		}
		return fn(e)
	})
}
