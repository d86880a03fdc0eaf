package agentsec_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/internal/syncbuf"
	"github.com/agentsec/agentsec/trust"
)

var reloadRules = []trust.Rule{
	{Tool: "read", Level: "public"},
	{Tool: "write", Level: "verified"},
}

func reloadStack(t *testing.T, store audit.Store) *agentsec.Stack {
	t.Helper()
	cfg := trustConfig(store, newKey(t), trust.Assignment{Agent: "alice", Level: "verified"},
		trust.Assignment{Agent: "bob", Level: "public"})
	cfg.TrustGate.Rules = reloadRules
	cfg.Version = "v1"
	return openStack(t, cfg)
}

func call(s *agentsec.Stack, agent, tool string) error {
	return s.Guard(context.Background(), agentsec.Request{Agent: agent, Session: agent + "/s", Tool: tool},
		func(context.Context) (int64, error) { return 1, nil })
}

// A reload takes effect for the next call; each change is recorded before
// it, with one "config.reload" record closing them; each call's record
// names the configuration that decided it.
func TestReloadTakesEffectRecorded(t *testing.T) {
	ctx := context.Background()
	s := reloadStack(t, audit.NewMemoryStore())
	if err := call(s, "alice", "write"); err != nil {
		t.Fatal(err)
	}
	if err := call(s, "bob", "write"); !errors.Is(err, agentsec.ErrTrustDenied) {
		t.Fatalf("bob's write before the reload: %v", err)
	}
	before := s.Audit.Size()

	got, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: agentsec.TrustGateConfig{
		Rules:        []trust.Rule{{Tool: "write", Level: "public"}, {Tool: "deploy", Level: "privileged"}},
		DefaultLevel: "privileged",
		Agents: []trust.Assignment{{Agent: "alice", Level: "privileged"}, {Agent: "bob", Level: "public"},
			{Agent: "carol", Level: "verified", Scope: "ops"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"default level privileged (was (none: denied))",
		`rule "deploy": privileged (new)`,
		`rule "read" removed (was public)`,
		`rule "write": public (was verified)`,
		`agent "alice": privileged (was verified)`,
		`agent "carol" in scope "ops": verified (new)`,
	}
	if !slices.Equal(got.Changes, want) {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got.Changes, "\n"), strings.Join(want, "\n"))
	}
	page, err := s.Audit.Query(ctx, audit.Filter{Cursor: strconv.FormatUint(before, 10), Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != len(want)+1 {
		t.Fatalf("%d records for the reload, want %d", len(page.Records), len(want)+1)
	}
	closing := page.Records[len(page.Records)-1]
	if closing.Event != agentsec.EventConfigReload || closing.Seq != got.Seq || closing.Attrs["config"] != "v2" ||
		closing.Attrs["previous"] != "v1" || closing.Attrs["changes"] != "6" {
		t.Errorf("closing record: %+v", closing)
	}
	for _, r := range page.Records {
		if r.Attrs["reload"] != closing.Attrs["reload"] || r.Attrs["reload"] == "" {
			t.Errorf("record %d (%s) is not of the reload: %v", r.Seq, r.Event, r.Attrs)
		}
	}
	if r := page.Records[3]; r.Event != agentsec.EventTrustRule || r.Tool != "write" || r.RequiredLevel != "public" || r.Attrs["previous"] != "verified" {
		t.Errorf("the write rule's record: %+v", r)
	}

	// In force for the next calls, and named on their records.
	if err := call(s, "bob", "write"); err != nil {
		t.Errorf("bob's write after the reload: %v", err)
	}
	if err := call(s, "bob", "read"); !errors.Is(err, agentsec.ErrTrustDenied) { // the default: privileged
		t.Errorf("bob's read after the reload: %v", err)
	}
	last, err := s.Audit.Query(ctx, audit.Filter{Agent: "bob", Event: agentsec.EventToolCall, Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	configs := []string{}
	for _, r := range last.Records {
		configs = append(configs, r.Attrs["config"])
	}
	if !slices.Equal(configs, []string{"v1", "v2", "v2"}) {
		t.Errorf("bob's calls were decided under %v", configs)
	}
	if s.TrustGate.Version() != "v2" {
		t.Errorf("version %q", s.TrustGate.Version())
	}

	// The same again changes nothing and records nothing.
	size := s.Audit.Size()
	again, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: agentsec.TrustGateConfig{
		Rules:        []trust.Rule{{Tool: "deploy", Level: "privileged"}, {Tool: "write", Level: "public"}},
		DefaultLevel: "privileged",
		Agents: []trust.Assignment{{Agent: "carol", Level: "verified", Scope: "ops"}, {Agent: "alice", Level: "privileged"},
			{Agent: "bob", Level: "public"}},
	}})
	if err != nil || len(again.Changes) != 0 || s.Audit.Size() != size {
		t.Errorf("an unchanged reload: %+v, %v; %d records", again, err, s.Audit.Size()-size)
	}
}

// An invalid configuration, or one whose records can't be written,
// changes nothing.
func TestReloadRefused(t *testing.T) {
	ctx := context.Background()
	store := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	s := reloadStack(t, store)
	size := s.Audit.Size()
	for name, tc := range map[string]agentsec.TrustGateConfig{
		"unknown level":    {Rules: []trust.Rule{{Tool: "write", Level: "root"}}},
		"twice":            {Agents: []trust.Assignment{{Agent: "a", Level: "public"}, {Agent: "a", Level: "verified"}}},
		"malformed glob":   {Rules: []trust.Rule{{Tool: "fs__[", Level: "public"}}},
		"tool, no level":   {ToolName: "x"},
		"agent, bad level": {Agents: []trust.Assignment{{Agent: "a", Level: ""}}},
	} {
		if _, err := s.Reload(ctx, agentsec.Reload{TrustGate: tc, Version: "bad"}); err == nil {
			t.Errorf("%s: reloaded", name)
		}
	}
	if s.Audit.Size() != size {
		t.Errorf("refused reloads appended %d records", s.Audit.Size()-size)
	}
	store.Fail.Store(true)
	_, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: agentsec.TrustGateConfig{
		Rules: []trust.Rule{{Tool: "write", Level: "public"}}, Agents: []trust.Assignment{{Agent: "bob", Level: "public"}}}})
	if !errors.Is(err, agentsec.ErrAuditUnavailable) {
		t.Errorf("a reload with the log failing: %v", err)
	}
	store.Fail.Store(false)
	if s.TrustGate.Version() != "v1" || s.TrustGate.Check(agentsec.Request{Agent: "bob", Tool: "write"}).Allowed {
		t.Error("a reload that could not be recorded took effect")
	}
}

// A runtime change made over an assignment the new file keeps stays in
// force across a reload; one made over an assignment the file changes
// gives way to the file.
func TestReloadKeepsRuntimeChanges(t *testing.T) {
	ctx := context.Background()
	s := reloadStack(t, audit.NewMemoryStore())
	for _, a := range []trust.Assignment{{Agent: "alice", Level: "privileged"}, {Agent: "bob", Level: "privileged"}} {
		if _, err := s.TrustGate.AssignBy(ctx, a, agentsec.Change{Operator: "ops", Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: agentsec.TrustGateConfig{Rules: reloadRules,
		Agents: []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "bob", Level: "verified"}}}}); err != nil {
		t.Fatal(err)
	}
	if level(s, "alice", "") != "privileged" || level(s, "bob", "") != "verified" {
		t.Errorf("after the reload alice holds %q (want her runtime privileged), bob %q (want the file's verified)",
			level(s, "alice", ""), level(s, "bob", ""))
	}
}

// A thousand calls in flight across a reload: each is decided under one
// configuration, which its record names, and its outcome is that
// configuration's — v1 lets bob write, v2 does not.
func TestReloadCallsInFlight(t *testing.T) {
	ctx := context.Background()
	s := reloadStack(t, audit.NewMemoryStore())
	const calls = 1000
	var inFlight atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	start := func(n int) {
		for i := range n {
			wg.Go(func() {
				err := s.Guard(ctx, agentsec.Request{Agent: "bob", Session: "s" + strconv.Itoa(i%50), Tool: "read"},
					func(context.Context) (int64, error) {
						inFlight.Add(1)
						<-release
						return 1, nil
					})
				if err != nil && !errors.Is(err, agentsec.ErrTrustDenied) {
					t.Error(err)
				}
			})
		}
	}
	// Half the calls are past the gate, running, when the reload comes;
	// 400 start as it does, and the last 100 once it is done.
	start(calls / 2)
	for inFlight.Load() < calls/2 {
		time.Sleep(time.Millisecond)
	}
	start(calls/2 - 100)
	if _, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: agentsec.TrustGateConfig{
		Rules: []trust.Rule{{Tool: "read", Level: "verified"}}, Agents: []trust.Assignment{{Agent: "bob", Level: "public"}}}}); err != nil {
		t.Fatal(err)
	}
	start(100)
	close(release)
	wg.Wait()

	byConfig := map[string]int{}
	f := audit.Filter{Agent: "bob", Event: agentsec.EventToolCall, Limit: audit.MaxLimit}
	page, err := s.Audit.Query(ctx, f)
	if err != nil || page.Next != "" {
		t.Fatal(err, page.Next)
	}
	for _, r := range page.Records {
		c := r.Attrs["config"]
		byConfig[c]++
		switch {
		case c == "v1" && r.Outcome != audit.OutcomeAllowed:
			t.Errorf("record %d: decided under v1 but %s: %s", r.Seq, r.Outcome, r.Reason)
		case c == "v2" && (r.Outcome != audit.OutcomeDenied || r.RequiredLevel != "verified"):
			t.Errorf("record %d: decided under v2 but %s: %s", r.Seq, r.Outcome, r.Reason)
		case c != "v1" && c != "v2":
			t.Errorf("record %d names configuration %q", r.Seq, c)
		}
	}
	if len(page.Records) != calls || byConfig["v1"] < calls/2 || byConfig["v2"] < 100 {
		t.Errorf("%d records, by configuration %v", len(page.Records), byConfig)
	}
	t.Logf("decided under each configuration: %v", byConfig)
}

// failAfter lets left appends through once armed, then fails them.
type failAfter struct {
	audit.Store
	armed atomic.Bool
	left  atomic.Int64
}

func (s *failAfter) Append(ctx context.Context, e []audit.Entry) error {
	if s.armed.Load() && s.left.Add(-1) < 0 {
		return errors.New("disk full")
	}
	return s.Store.Append(ctx, e)
}

// TestRefusedReloadTakesNoEffectOnReplay: a reload refused partway — its
// first change stored, signed, then the store fails — leaves the
// configuration in force, and no replay counts the change it stored: not
// a Sync (a replica's, every 250 ms), not a reload of the old file (which
// records nothing), not a restart, and not a closing record a writer of
// the database appends unsigned. Otherwise the stored change (source
// "config", alice's line) would end an operator's runtime revocation.
func TestRefusedReloadTakesNoEffectOnReplay(t *testing.T) {
	ctx := context.Background()
	v1 := agentsec.TrustGateConfig{Rules: reloadRules,
		Agents: []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "bob", Level: "public"}}}
	v2 := agentsec.TrustGateConfig{Rules: reloadRules,
		Agents: []trust.Assignment{{Agent: "alice", Level: "privileged"}, {Agent: "bob", Level: "verified"}}}
	for _, after := range []string{"sync", "reload of v1", "forged close", "restart"} {
		t.Run(after, func(t *testing.T) {
			store := &failAfter{Store: audit.NewMemoryStore()}
			cfg := trustConfig(store, newKey(t), v1.Agents...)
			cfg.TrustGate.Rules, cfg.Version = reloadRules, "v1"
			s := openStack(t, cfg)
			if _, err := s.TrustGate.RevokeBy(ctx, "alice", "", agentsec.Change{Operator: "sec", Reason: "token leaked"}); err != nil {
				t.Fatal(err)
			}
			store.left.Store(1)
			store.armed.Store(true)
			if _, err := s.Reload(ctx, agentsec.Reload{Version: "v2", TrustGate: v2}); err == nil {
				t.Fatal("the reload was not refused")
			}
			store.armed.Store(false)
			if l := level(s, "alice", ""); l != "" || s.TrustGate.Version() != "v1" {
				t.Fatalf("after the refused reload: alice %q, version %s", l, s.TrustGate.Version())
			}
			page, err := s.Audit.Query(ctx, audit.Filter{Event: agentsec.EventTrustAssign, Agent: "alice"})
			if err != nil || len(page.Records) == 0 {
				t.Fatal(len(page.Records), err)
			}
			stored := page.Records[len(page.Records)-1]
			if stored.Attrs["reload"] == "" || stored.AssignedLevel != "privileged" {
				t.Fatalf("the refused reload's change was not stored: %+v", stored)
			}
			switch after {
			case "sync":
				err = s.TrustGate.Sync(ctx)
			case "reload of v1":
				_, err = s.Reload(ctx, agentsec.Reload{Version: "v1", TrustGate: v1})
			case "forged close":
				_, err = s.Audit.Log(ctx, audit.Record{Event: agentsec.EventConfigReload,
					Attrs: map[string]string{"reload": stored.Attrs["reload"], "signature": stored.Attrs["signature"]}})
				if err == nil {
					err = s.TrustGate.Sync(ctx)
				}
			case "restart":
				s.Close()
				s = openStack(t, cfg)
			}
			if err != nil {
				t.Fatal(err)
			}
			if l := level(s, "alice", ""); l != "" {
				t.Errorf("revoked alice holds %q again after a %s", l, after)
			}
		})
	}
}

// TestOwnAttributesAreReserved: every attribute agentsec writes on the
// records of a reload, a trust change and a call is one audit.ReservedAttr
// names, so a client (of the HTTP API, say) can't set one and pass its
// record off as agentsec's.
func TestOwnAttributesAreReserved(t *testing.T) {
	ctx := context.Background()
	s := reloadStack(t, audit.NewMemoryStore())
	if _, err := s.TrustGate.RevokeBy(ctx, "bob", "", agentsec.Change{Operator: "sec", Reason: "leaked"}); err != nil {
		t.Fatal(err)
	}
	ladder, err := trust.NewLadder("wider", "public", "verified", "privileged", "root")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reload(ctx, agentsec.Reload{Version: "v2", Operator: "ops", TrustGate: agentsec.TrustGateConfig{Rules: reloadRules,
		Ladder: ladder, DefaultLevel: "verified",
		Agents: []trust.Assignment{{Agent: "alice", Level: "privileged"}, {Agent: "carol", Level: "public", Scope: "x"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := call(s, "alice", "write"); err != nil {
		t.Fatal(err)
	}
	page, err := s.Audit.Query(ctx, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, rec := range page.Records {
		for k := range rec.Attrs {
			seen[k] = true
			if !audit.ReservedAttr(k) {
				t.Errorf("a %s record carries the attribute %q, which a client may set", rec.Event, k)
			}
		}
		if !audit.ReservedEvent(rec.Event) {
			t.Errorf("the event %q is agentsec's, and a client may log it", rec.Event)
		}
	}
	t.Logf("attributes seen: %v", slices.Sorted(maps.Keys(seen)))
}

// TestReloadChangesOfAnOlderVersionHold: a reload's change written by an
// older agentsec — signed without its reload id, and closed by an
// unsigned record — took effect when it was written, and still does on
// replay: here the reload that dropped alice's line ended her runtime
// grant for good, so with the old line back she holds the file's level,
// and no forgery is reported.
func TestReloadChangesOfAnOlderVersionHold(t *testing.T) {
	ctx := context.Background()
	store := audit.NewMemoryStore()
	var logged syncbuf.Buffer
	cfg := trustConfig(store, newKey(t), trust.Assignment{Agent: "alice", Level: "public"})
	cfg.Audit.Logger = slog.New(slog.NewTextHandler(&logged, nil))
	s := openStack(t, cfg)
	if _, err := s.TrustGate.AssignBy(ctx, trust.Assignment{Agent: "alice", Level: "privileged"}, agentsec.Change{Operator: "ops"}); err != nil {
		t.Fatal(err)
	}
	// The older version's reload dropping alice's line, as it wrote it:
	// the statement it signed has no reload id.
	statement := `{"namespace":"test","id":"0011223344556677","event":"trust.revoke","agent":"alice","scope":"",` +
		`"level":"","expires":"","configured":"(none)","source":"config","operator":"","reason":"alice's line removed"}`
	sig, err := s.Audit.SignStatement("trust-change/v1", []byte(statement))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	old, err := audit.NewLog(ctx, store, audit.Options{Namespace: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range []audit.Record{
		{Event: agentsec.EventTrustRevoke, Agent: "alice", Reason: "alice's line removed", Attrs: map[string]string{
			"change_id": "0011223344556677", "configured": "(none)", "source": "config", "reload": "aabbccdd",
			"signature": base64.StdEncoding.EncodeToString(sig)}},
		{Event: agentsec.EventConfigReload, Reason: "configuration reloaded", Attrs: map[string]string{"reload": "aabbccdd", "changes": "1"}},
	} {
		if _, err := old.Log(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()

	s = openStack(t, cfg) // the file's old line back
	if got := level(s, "alice", ""); got != "public" {
		t.Errorf("alice holds %q, want the file's public: the older version's reload ended her runtime grant", got)
	}
	if strings.Contains(logged.String(), "not signed") {
		t.Errorf("the older version's change was reported forged:\n%s", logged.String())
	}
}
