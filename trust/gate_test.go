package trust

import (
	"errors"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustGate(t testing.TB, p *Policy, as ...Assignment) *Gate {
	t.Helper()
	g, err := NewGate(p, as...)
	if err != nil {
		t.Fatalf("NewGate: %v", err)
	}
	return g
}

func mustAssign(t testing.TB, g *Gate, a Assignment) {
	t.Helper()
	if err := g.Assign(a); err != nil {
		t.Fatalf("Assign(%+v): %v", a, err)
	}
}

// checkLadderPairs checks, for every assigned level a and required level r
// on l, that an agent holding a may call a tool requiring r iff a >= r.
func checkLadderPairs(t *testing.T, l *Ladder) {
	levels := l.Levels()
	for ai, assigned := range levels {
		for ri, required := range levels {
			t.Run(assigned+">="+required, func(t *testing.T) {
				p := mustPolicy(t, l, []Rule{{Tool: "tool", Level: required}}, "")
				g := mustGate(t, p, Assignment{Agent: "agent", Level: assigned})
				d := g.Check(Request{Agent: "agent", Tool: "tool"})

				wantAllowed, wantReason := ai >= ri, ReasonAllowed
				if !wantAllowed {
					wantReason = ReasonInsufficient
				}
				if d.Allowed != wantAllowed {
					t.Errorf("Allowed = %v, want %v", d.Allowed, wantAllowed)
				}
				if d.Reason != wantReason {
					t.Errorf("Reason = %v, want %v", d.Reason, wantReason)
				}
				if got := d.RequiredName(); got != required {
					t.Errorf("RequiredName() = %q, want %q", got, required)
				}
				if got := d.AssignedName(); got != assigned {
					t.Errorf("AssignedName() = %q, want %q", got, assigned)
				}
				if d.Required != Level(ri) || d.Assigned != Level(ai) {
					t.Errorf("Required, Assigned = %d, %d; want %d, %d", d.Required, d.Assigned, ri, ai)
				}
				if d.Expired {
					t.Errorf("Expired = true, want false")
				}
				if d.Agent != "agent" || d.Tool != "tool" || d.Scope != "" {
					t.Errorf("Agent, Scope, Tool = %q, %q, %q; want %q, %q, %q", d.Agent, d.Scope, d.Tool, "agent", "", "tool")
				}
			})
		}
	}
}

func TestCheckDefaultLadderPairs(t *testing.T) { checkLadderPairs(t, DefaultLadder()) }
func TestCheckAumOSLadderPairs(t *testing.T)   { checkLadderPairs(t, AumOSLadder()) }

func TestCheckCustomLadderPairs(t *testing.T) {
	l, err := NewLadder("custom", "none", "read", "write", "admin", "root")
	if err != nil {
		t.Fatal(err)
	}
	checkLadderPairs(t, l)
}

func TestCheckSingleLevelLadder(t *testing.T) {
	l, err := NewLadder("flat", "member")
	if err != nil {
		t.Fatal(err)
	}
	checkLadderPairs(t, l)
}

func TestCheckUnassigned(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "fs.read", Level: "public"}}, "public")
	g := mustGate(t, p,
		Assignment{Agent: "alice", Level: "privileged"},
		Assignment{Agent: "bob", Scope: "team-a", Level: "privileged"},
	)
	tests := []struct {
		name string
		req  Request
	}{
		{"unknown agent", Request{Agent: "mallory", Tool: "fs.read"}},
		{"empty agent", Request{Agent: "", Tool: "fs.read"}},
		{"empty agent in scope", Request{Agent: "", Scope: "team-a", Tool: "fs.read"}},
		{"agent of another case", Request{Agent: "Alice", Tool: "fs.read"}},
		{"agent with suffix", Request{Agent: "alice ", Tool: "fs.read"}},
		{"scoped agent outside its scope", Request{Agent: "bob", Tool: "fs.read"}},
		{"scoped agent in another scope", Request{Agent: "bob", Scope: "team-b", Tool: "fs.read"}},
		{"unknown agent, tool without rule", Request{Agent: "mallory", Tool: "shell"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := g.Check(tt.req)
			if d.Allowed {
				t.Errorf("Allowed = true, want false")
			}
			if d.Reason != ReasonUnassigned {
				t.Errorf("Reason = %v, want %v", d.Reason, ReasonUnassigned)
			}
			if got := d.AssignedName(); got != "" {
				t.Errorf("AssignedName() = %q, want \"\"", got)
			}
		})
	}
}

func TestCheckNoRule(t *testing.T) {
	rules := []Rule{{Tool: "fs.read", Level: "public"}, {Tool: "github/*", Level: "verified"}}
	as := []Assignment{{Agent: "root", Level: "privileged"}}

	t.Run("no default", func(t *testing.T) {
		g := mustGate(t, mustPolicy(t, DefaultLadder(), rules, ""), as...)
		for _, tool := range []string{"shell", "", "github", "fs.read2", "*"} {
			d := g.Check(Request{Agent: "root", Tool: tool})
			if d.Allowed {
				t.Errorf("tool %q: Allowed = true, want false", tool)
			}
			if d.Reason != ReasonNoRule {
				t.Errorf("tool %q: Reason = %v, want %v", tool, d.Reason, ReasonNoRule)
			}
			if got := d.RequiredName(); got != "" {
				t.Errorf("tool %q: RequiredName() = %q, want \"\"", tool, got)
			}
			if got := d.AssignedName(); got != "privileged" {
				t.Errorf("tool %q: AssignedName() = %q, want %q", tool, got, "privileged")
			}
		}
	})

	for _, tt := range []struct {
		def      string
		assigned string
		allowed  bool
	}{
		{"public", "public", true},
		{"verified", "public", false},
		{"verified", "verified", true},
		{"privileged", "verified", false},
		{"privileged", "privileged", true},
	} {
		t.Run("default "+tt.def+"/assigned "+tt.assigned, func(t *testing.T) {
			g := mustGate(t, mustPolicy(t, DefaultLadder(), rules, tt.def), Assignment{Agent: "a", Level: tt.assigned})
			d := g.Check(Request{Agent: "a", Tool: "shell"})
			if d.Allowed != tt.allowed {
				t.Errorf("Allowed = %v, want %v", d.Allowed, tt.allowed)
			}
			wantReason := ReasonInsufficient
			if tt.allowed {
				wantReason = ReasonAllowed
			}
			if d.Reason != wantReason {
				t.Errorf("Reason = %v, want %v", d.Reason, wantReason)
			}
			if got := d.RequiredName(); got != tt.def {
				t.Errorf("RequiredName() = %q, want %q", got, tt.def)
			}
		})
	}
}

// An unknown agent is reported as unassigned even for a tool with no rule:
// who is asking is decided first.
func TestCheckUnassignedBeforeNoRule(t *testing.T) {
	g := mustGate(t, mustPolicy(t, DefaultLadder(), nil, ""))
	d := g.Check(Request{Agent: "x", Tool: "y"})
	if d.Allowed || d.Reason != ReasonUnassigned {
		t.Errorf("Allowed, Reason = %v, %v; want false, %v", d.Allowed, d.Reason, ReasonUnassigned)
	}
}

func TestCheckExpiry(t *testing.T) {
	for _, l := range []*Ladder{DefaultLadder(), AumOSLadder()} {
		t.Run(l.Name(), func(t *testing.T) {
			levels := l.Levels()
			lowest, highest := levels[0], levels[len(levels)-1]
			rules := make([]Rule, len(levels))
			for i, lv := range levels {
				rules[i] = Rule{Tool: "tool-" + lv, Level: lv}
			}
			p := mustPolicy(t, l, rules, "")
			expires := time.Now().Add(time.Hour)
			g := mustGate(t, p, Assignment{Agent: "a", Level: highest, Expires: expires})

			for _, tt := range []struct {
				name    string
				now     time.Time
				expired bool
			}{
				{"long before", expires.Add(-time.Hour + time.Second), false},
				{"just before", expires.Add(-time.Nanosecond), false},
				{"at", expires, true},
				{"just after", expires.Add(time.Nanosecond), true},
				{"long after", expires.Add(24 * 365 * time.Hour), true},
				{"at, without monotonic reading", expires.Round(0), true},
				{"at, in another zone", expires.In(time.FixedZone("x", 5*3600)), true},
			} {
				t.Run(tt.name, func(t *testing.T) {
					for ri, required := range levels {
						d := g.CheckAt(Request{Agent: "a", Tool: "tool-" + required}, tt.now)
						if d.Expired != tt.expired {
							t.Errorf("%s: Expired = %v, want %v", required, d.Expired, tt.expired)
						}
						wantAssigned, wantAllowed, wantReason := highest, true, ReasonAllowed
						if tt.expired {
							wantAssigned = lowest
							if ri > 0 {
								wantAllowed, wantReason = false, ReasonExpired
							}
						}
						if d.Allowed != wantAllowed {
							t.Errorf("%s: Allowed = %v, want %v", required, d.Allowed, wantAllowed)
						}
						if d.Reason != wantReason {
							t.Errorf("%s: Reason = %v, want %v", required, d.Reason, wantReason)
						}
						if got := d.AssignedName(); got != wantAssigned {
							t.Errorf("%s: AssignedName() = %q, want %q", required, got, wantAssigned)
						}
						if got := d.RequiredName(); got != required {
							t.Errorf("%s: RequiredName() = %q, want %q", required, got, required)
						}
					}
				})
			}

			// The real clock is before the expiry.
			d := g.Check(Request{Agent: "a", Tool: "tool-" + highest})
			if !d.Allowed || d.Expired {
				t.Errorf("Check before expiry: Allowed, Expired = %v, %v; want true, false", d.Allowed, d.Expired)
			}
			// Expiry changes no assignment: it is applied at check time.
			a, ok := g.Assignment("a", "")
			if !ok || a.Level != highest || !a.Expires.Equal(expires) {
				t.Errorf("Assignment(\"a\", \"\") = %+v, %v; want level %q expiring %v", a, ok, highest, expires)
			}
		})
	}
}

// An expired assignment denies by the real clock too, not only by CheckAt.
func TestCheckExpiryRealClock(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "verified"}}, "")
	g := mustGate(t, p)
	// Assigned as of now, so that a pause before it can't make the
	// expiry pass first; checked on the real clock past it.
	now := time.Now()
	expires := now.Add(20 * time.Millisecond)
	if err := g.AssignAt(Assignment{Agent: "a", Level: "privileged", Expires: expires}, now); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(expires) + 30*time.Millisecond)
	d := g.Check(Request{Agent: "a", Tool: "t"})
	if d.Allowed || d.Reason != ReasonExpired || !d.Expired {
		t.Errorf("Allowed, Reason, Expired = %v, %v, %v; want false, %v, true", d.Allowed, d.Reason, d.Expired, ReasonExpired)
	}
}

// An expired scoped assignment leaves the agent at the lowest level in its
// scope; it does not fall back to a higher unscoped assignment.
func TestCheckExpiredScopedDoesNotFallBack(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "verified"}}, "")
	expires := time.Now().Add(time.Hour)
	g := mustGate(t, p,
		Assignment{Agent: "a", Level: "privileged"},
		Assignment{Agent: "a", Scope: "s", Level: "privileged", Expires: expires},
	)
	d := g.CheckAt(Request{Agent: "a", Scope: "s", Tool: "t"}, expires)
	if d.Allowed || d.Reason != ReasonExpired || d.AssignedName() != "public" {
		t.Errorf("scope s after expiry: Allowed, Reason, AssignedName() = %v, %v, %q; want false, %v, %q",
			d.Allowed, d.Reason, d.AssignedName(), ReasonExpired, "public")
	}
	d = g.CheckAt(Request{Agent: "a", Scope: "other", Tool: "t"}, expires)
	if !d.Allowed || d.Expired {
		t.Errorf("scope other after expiry: Allowed, Expired = %v, %v; want true, false", d.Allowed, d.Expired)
	}
}

func TestAssignExpiresInPast(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), nil, "")
	for _, tt := range []struct {
		name    string
		expires time.Time
	}{
		{"an hour ago", time.Now().Add(-time.Hour)},
		{"a nanosecond ago", time.Now().Add(-time.Nanosecond)},
		{"unix epoch", time.Unix(0, 0)},
		{"year 1", time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := Assignment{Agent: "a", Level: "verified", Expires: tt.expires}
			g := mustGate(t, p)
			if err := g.Assign(a); err == nil {
				t.Errorf("Assign: got nil error, want error")
			}
			if err := g.Validate(a); err == nil {
				t.Errorf("Validate: got nil error, want error")
			}
			if _, err := NewGate(p, a); err == nil {
				t.Errorf("NewGate: got nil error, want error")
			}
			if got := g.Assignments(); len(got) != 0 {
				t.Errorf("after failed Assign, Assignments() = %v, want none", got)
			}
		})
	}
}

func TestScopesNeverCollide(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "public"}}, "")
	tests := []struct {
		name       string
		assigned   Assignment
		unassigned Request
	}{
		{"a:b in c vs a in b:c", Assignment{Agent: "a:b", Scope: "c", Level: "public"}, Request{Agent: "a", Scope: "b:c", Tool: "t"}},
		{"a in b:c vs a:b in c", Assignment{Agent: "a", Scope: "b:c", Level: "public"}, Request{Agent: "a:b", Scope: "c", Tool: "t"}},
		{"a/b in c vs a in b/c", Assignment{Agent: "a/b", Scope: "c", Level: "public"}, Request{Agent: "a", Scope: "b/c", Tool: "t"}},
		{"a b in c vs a in b c", Assignment{Agent: "a b", Scope: "c", Level: "public"}, Request{Agent: "a", Scope: "b c", Tool: "t"}},
		{"ab in c vs a in bc", Assignment{Agent: "ab", Scope: "c", Level: "public"}, Request{Agent: "a", Scope: "bc", Tool: "t"}},
		{"a in bc vs ab in c", Assignment{Agent: "a", Scope: "bc", Level: "public"}, Request{Agent: "ab", Scope: "c", Tool: "t"}},
		{"a:b unscoped vs a in b", Assignment{Agent: "a:b", Level: "public"}, Request{Agent: "a", Scope: "b", Tool: "t"}},
		{"a in b vs a:b unscoped", Assignment{Agent: "a", Scope: "b", Level: "public"}, Request{Agent: "a:b", Tool: "t"}},
		{"a: in b vs a in :b", Assignment{Agent: "a:", Scope: "b", Level: "public"}, Request{Agent: "a", Scope: ":b", Tool: "t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := mustGate(t, p, tt.assigned)
			if d := g.Check(tt.unassigned); d.Allowed || d.Reason != ReasonUnassigned {
				t.Errorf("Check(%+v) = %v, %v; want denied, %v", tt.unassigned, d.Allowed, d.Reason, ReasonUnassigned)
			}
			if a, ok := g.Assignment(tt.unassigned.Agent, tt.unassigned.Scope); ok {
				t.Errorf("Assignment(%q, %q) = %+v, want none", tt.unassigned.Agent, tt.unassigned.Scope, a)
			}
			own := Request{Agent: tt.assigned.Agent, Scope: tt.assigned.Scope, Tool: "t"}
			if d := g.Check(own); !d.Allowed {
				t.Errorf("Check(%+v) = %v, %v; want allowed", own, d.Allowed, d.Reason)
			}
		})
	}

	// Both at once, at different levels: each keeps its own.
	g := mustGate(t, mustPolicy(t, DefaultLadder(), nil, "public"),
		Assignment{Agent: "a:b", Scope: "c", Level: "verified"},
		Assignment{Agent: "a", Scope: "b:c", Level: "privileged"},
	)
	if got := g.Check(Request{Agent: "a:b", Scope: "c", Tool: "t"}).AssignedName(); got != "verified" {
		t.Errorf("a:b in c: AssignedName() = %q, want %q", got, "verified")
	}
	if got := g.Check(Request{Agent: "a", Scope: "b:c", Tool: "t"}).AssignedName(); got != "privileged" {
		t.Errorf("a in b:c: AssignedName() = %q, want %q", got, "privileged")
	}
}

func TestScopedOverridesUnscoped(t *testing.T) {
	l := DefaultLadder()
	p := mustPolicy(t, l, []Rule{{Tool: "t", Level: "public"}}, "")
	g := mustGate(t, p,
		Assignment{Agent: "a", Level: "verified"},
		Assignment{Agent: "a", Scope: "up", Level: "privileged"},
		Assignment{Agent: "a", Scope: "down", Level: "public"},
	)
	tests := []struct {
		scope string
		want  string
	}{
		{"", "verified"},
		{"up", "privileged"},
		{"down", "public"}, // a scoped assignment overrides downwards too
		{"elsewhere", "verified"},
		{"UP", "verified"},
		{"up ", "verified"},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.scope), func(t *testing.T) {
			d := g.Check(Request{Agent: "a", Scope: tt.scope, Tool: "t"})
			if got := d.AssignedName(); got != tt.want {
				t.Errorf("AssignedName() = %q, want %q", got, tt.want)
			}
			if d.Scope != tt.scope {
				t.Errorf("Scope = %q, want %q", d.Scope, tt.scope)
			}
		})
	}

	// Revoking the scoped assignment falls back to the unscoped one.
	if !g.Revoke("a", "up") {
		t.Errorf("Revoke(\"a\", \"up\") = false, want true")
	}
	if got := g.Check(Request{Agent: "a", Scope: "up", Tool: "t"}).AssignedName(); got != "verified" {
		t.Errorf("after Revoke, scope up: AssignedName() = %q, want %q", got, "verified")
	}
	if g.Revoke("a", "up") {
		t.Errorf("second Revoke(\"a\", \"up\") = true, want false")
	}
	// The other scoped assignment is untouched.
	if got := g.Check(Request{Agent: "a", Scope: "down", Tool: "t"}).AssignedName(); got != "public" {
		t.Errorf("after Revoke, scope down: AssignedName() = %q, want %q", got, "public")
	}

	// Revoking the unscoped one leaves only the scoped one.
	if !g.Revoke("a", "") {
		t.Errorf("Revoke(\"a\", \"\") = false, want true")
	}
	for _, scope := range []string{"", "up", "elsewhere"} {
		if d := g.Check(Request{Agent: "a", Scope: scope, Tool: "t"}); d.Reason != ReasonUnassigned {
			t.Errorf("after revoking unscoped, scope %q: Reason = %v, want %v", scope, d.Reason, ReasonUnassigned)
		}
	}
	if got := g.Check(Request{Agent: "a", Scope: "down", Tool: "t"}).AssignedName(); got != "public" {
		t.Errorf("after revoking unscoped, scope down: AssignedName() = %q, want %q", got, "public")
	}
}

func TestAssignReplaces(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "privileged"}}, "")
	g := mustGate(t, p, Assignment{Agent: "a", Level: "privileged"})
	mustAssign(t, g, Assignment{Agent: "a", Level: "public"})
	d := g.Check(Request{Agent: "a", Tool: "t"})
	if d.Allowed || d.Reason != ReasonInsufficient {
		t.Errorf("after lowering: Allowed, Reason = %v, %v; want false, %v", d.Allowed, d.Reason, ReasonInsufficient)
	}
	want := []Assignment{{Agent: "a", Level: "public"}}
	if got := g.Assignments(); !slices.Equal(got, want) {
		t.Errorf("Assignments() = %v, want %v", got, want)
	}

	// Replacing a timed assignment with an untimed one drops the expiry.
	exp := time.Now().Add(time.Hour)
	mustAssign(t, g, Assignment{Agent: "a", Level: "privileged", Expires: exp})
	mustAssign(t, g, Assignment{Agent: "a", Level: "privileged"})
	if d := g.CheckAt(Request{Agent: "a", Tool: "t"}, exp.Add(time.Hour)); !d.Allowed || d.Expired {
		t.Errorf("after replacing timed assignment: Allowed, Expired = %v, %v; want true, false", d.Allowed, d.Expired)
	}
}

func TestRevoke(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "public"}}, "")
	g := mustGate(t, p, Assignment{Agent: "a", Level: "privileged"})
	if g.Revoke("b", "") {
		t.Errorf("Revoke of unknown agent = true, want false")
	}
	if g.Revoke("a", "s") {
		t.Errorf("Revoke of absent scope = true, want false")
	}
	if d := g.Check(Request{Agent: "a", Tool: "t"}); !d.Allowed {
		t.Errorf("after no-op revokes: Allowed = false, want true")
	}
	if !g.Revoke("a", "") {
		t.Errorf("Revoke(\"a\", \"\") = false, want true")
	}
	if d := g.Check(Request{Agent: "a", Tool: "t"}); d.Allowed || d.Reason != ReasonUnassigned {
		t.Errorf("after Revoke: Allowed, Reason = %v, %v; want false, %v", d.Allowed, d.Reason, ReasonUnassigned)
	}
	if got := g.Assignments(); len(got) != 0 {
		t.Errorf("after Revoke, Assignments() = %v, want none", got)
	}
	// The gate works from empty again.
	mustAssign(t, g, Assignment{Agent: "a", Level: "public"})
	if d := g.Check(Request{Agent: "a", Tool: "t"}); !d.Allowed {
		t.Errorf("after reassigning: Allowed = false, want true")
	}
}

func TestAssignments(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	p := mustPolicy(t, AumOSLadder(), nil, "")
	g := mustGate(t, p,
		Assignment{Agent: "zed", Level: "observer"},
		Assignment{Agent: "amy", Scope: "s2", Level: "suggest", Expires: exp},
		Assignment{Agent: "amy", Level: "monitor"},
	)
	mustAssign(t, g, Assignment{Agent: "amy", Scope: "s1", Level: "autonomous"})
	want := []Assignment{
		{Agent: "amy", Level: "monitor"},
		{Agent: "amy", Scope: "s1", Level: "autonomous"},
		{Agent: "amy", Scope: "s2", Level: "suggest", Expires: exp},
		{Agent: "zed", Level: "observer"},
	}
	if got := g.Assignments(); !slices.Equal(got, want) {
		t.Errorf("Assignments() = %v, want %v", got, want)
	}
	for _, a := range want {
		got, ok := g.Assignment(a.Agent, a.Scope)
		if !ok || got != a {
			t.Errorf("Assignment(%q, %q) = %+v, %v; want %+v, true", a.Agent, a.Scope, got, ok, a)
		}
	}
	// Assignment does not fall back to the unscoped assignment.
	if got, ok := g.Assignment("amy", "s3"); ok {
		t.Errorf("Assignment(\"amy\", \"s3\") = %+v, true; want none", got)
	}
	if got, ok := g.Assignment("zed", "s1"); ok {
		t.Errorf("Assignment(\"zed\", \"s1\") = %+v, true; want none", got)
	}
	// The returned slice is a copy.
	g.Assignments()[0].Level = "autonomous"
	if got := g.Assignments(); !slices.Equal(got, want) {
		t.Errorf("after mutating a result, Assignments() = %v, want %v", got, want)
	}
}

// Trust is never computed: checks, allowed or denied, change no level.
func TestChecksChangeNoLevel(t *testing.T) {
	l := AumOSLadder()
	p := mustPolicy(t, l, []Rule{
		{Tool: "read", Level: "observer"},
		{Tool: "write*", Level: "act-with-approval"},
		{Tool: "deploy", Level: "autonomous"},
	}, "")
	exp := time.Now().Add(time.Hour)
	tests := []struct {
		name    string
		req     Request
		allowed bool
	}{
		{"allowed exact", Request{Agent: "a", Tool: "read"}, true},
		{"allowed pattern", Request{Agent: "a", Tool: "write/file"}, true},
		{"allowed scoped", Request{Agent: "a", Scope: "s", Tool: "deploy"}, true},
		{"denied insufficient", Request{Agent: "a", Tool: "deploy"}, false},
		{"denied no rule", Request{Agent: "a", Tool: "other"}, false},
		{"denied unassigned", Request{Agent: "b", Tool: "read"}, false},
		{"denied timed", Request{Agent: "c", Tool: "deploy"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := mustGate(t, p,
				Assignment{Agent: "a", Level: "act-and-report"},
				Assignment{Agent: "a", Scope: "s", Level: "autonomous"},
				Assignment{Agent: "c", Level: "suggest", Expires: exp},
			)
			before := g.Assignments()
			first := g.Check(tt.req)
			if first.Allowed != tt.allowed {
				t.Fatalf("Allowed = %v (%v), want %v", first.Allowed, first.Reason, tt.allowed)
			}
			for i := range 1000 {
				if d := g.Check(tt.req); d != first {
					t.Fatalf("check %d: decision %v, want %v", i+1, d, first)
				}
			}
			if after := g.Assignments(); !slices.Equal(after, before) {
				t.Errorf("after 1000 checks, Assignments() = %v, want %v", after, before)
			}
			if d := g.Check(tt.req); d != first {
				t.Errorf("after 1000 checks, decision %v, want %v", d, first)
			}
		})
	}
}

func TestAssignErrors(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), nil, "")
	long := strings.Repeat("x", maxNameLen+1)
	tests := []struct {
		name         string
		a            Assignment
		unknownLevel bool
	}{
		{name: "empty agent", a: Assignment{Agent: "", Level: "public"}},
		{name: "empty agent with scope", a: Assignment{Agent: "", Scope: "s", Level: "public"}},
		{name: "agent with NUL", a: Assignment{Agent: "a\x00", Level: "public"}},
		{name: "agent with newline", a: Assignment{Agent: "a\nb", Level: "public"}},
		{name: "agent with carriage return", a: Assignment{Agent: "a\r", Level: "public"}},
		{name: "agent with tab", a: Assignment{Agent: "a\tb", Level: "public"}},
		{name: "agent with escape", a: Assignment{Agent: "\x1b[31ma", Level: "public"}},
		{name: "agent with DEL", a: Assignment{Agent: "a\x7f", Level: "public"}},
		{name: "agent with C1 CSI", a: Assignment{Agent: "a\u009b31m", Level: "public"}},
		{name: "agent with C1 NEL", a: Assignment{Agent: "a\u0085b", Level: "public"}},
		{name: "agent invalid UTF-8", a: Assignment{Agent: "a\xff", Level: "public"}},
		{name: "agent truncated UTF-8", a: Assignment{Agent: "caf\xc3", Level: "public"}},
		{name: "agent too long", a: Assignment{Agent: long, Level: "public"}},
		{name: "scope with newline", a: Assignment{Agent: "a", Scope: "s\n", Level: "public"}},
		{name: "scope with C1 control", a: Assignment{Agent: "a", Scope: "s\u0090", Level: "public"}},
		{name: "scope invalid UTF-8", a: Assignment{Agent: "a", Scope: "\xfe", Level: "public"}},
		{name: "scope too long", a: Assignment{Agent: "a", Scope: long, Level: "public"}},
		{name: "unknown level", a: Assignment{Agent: "a", Level: "admin"}, unknownLevel: true},
		{name: "empty level", a: Assignment{Agent: "a", Level: ""}, unknownLevel: true},
		{name: "level from another ladder", a: Assignment{Agent: "a", Level: "autonomous"}, unknownLevel: true},
		{name: "level of another case", a: Assignment{Agent: "a", Level: "Verified"}, unknownLevel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := mustGate(t, p)
			err := g.Assign(tt.a)
			if err == nil {
				t.Fatalf("Assign(%+v): got nil error, want error", tt.a)
			}
			if got := errors.Is(err, ErrUnknownLevel); got != tt.unknownLevel {
				t.Errorf("errors.Is(%v, ErrUnknownLevel) = %v, want %v", err, got, tt.unknownLevel)
			}
			if got := g.Assignments(); len(got) != 0 {
				t.Errorf("after failed Assign, Assignments() = %v, want none", got)
			}
			if err := g.Validate(tt.a); err == nil {
				t.Errorf("Validate(%+v): got nil error, want error", tt.a)
			}
			if _, err := NewGate(p, Assignment{Agent: "ok", Level: "public"}, tt.a); err == nil {
				t.Errorf("NewGate with %+v: got nil error, want error", tt.a)
			} else if got := errors.Is(err, ErrUnknownLevel); got != tt.unknownLevel {
				t.Errorf("NewGate: errors.Is(%v, ErrUnknownLevel) = %v, want %v", err, got, tt.unknownLevel)
			}
		})
	}
}

func TestAssignAccepts(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "t", Level: "public"}}, "")
	tests := []struct {
		name string
		a    Assignment
	}{
		{"agent of max length", Assignment{Agent: strings.Repeat("x", maxNameLen), Level: "public"}},
		{"scope of max length", Assignment{Agent: "a", Scope: strings.Repeat("s", maxNameLen), Level: "public"}},
		{"unicode agent", Assignment{Agent: "agent-é-世界", Level: "public"}},
		{"agent with spaces and punctuation", Assignment{Agent: "spiffe://example.org/agent 7", Scope: "team:a/b", Level: "public"}},
		{"future expiry", Assignment{Agent: "a", Level: "public", Expires: time.Now().Add(time.Minute)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := mustGate(t, p)
			if err := g.Validate(tt.a); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if got := g.Assignments(); len(got) != 0 {
				t.Errorf("after Validate, Assignments() = %v, want none", got)
			}
			mustAssign(t, g, tt.a)
			if d := g.Check(Request{Agent: tt.a.Agent, Scope: tt.a.Scope, Tool: "t"}); !d.Allowed {
				t.Errorf("Check: %v, want allowed", d)
			}
		})
	}
}

func TestNewGateErrors(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), nil, "")
	tests := []struct {
		name   string
		policy *Policy
		as     []Assignment
	}{
		{"nil policy", nil, nil},
		{"duplicate unscoped", p, []Assignment{{Agent: "a", Level: "public"}, {Agent: "a", Level: "verified"}}},
		{"duplicate same level", p, []Assignment{{Agent: "a", Level: "public"}, {Agent: "a", Level: "public"}}},
		{"duplicate scoped", p, []Assignment{{Agent: "a", Scope: "s", Level: "public"}, {Agent: "b", Level: "public"}, {Agent: "a", Scope: "s", Level: "privileged"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := NewGate(tt.policy, tt.as...)
			if err == nil {
				t.Fatalf("NewGate = %v, want error", g)
			}
			if g != nil {
				t.Errorf("NewGate returned gate %v with error %v", g, err)
			}
		})
	}

	// Same agent in different scopes, or different agents, are no duplicates.
	g := mustGate(t, p,
		Assignment{Agent: "a", Level: "public"},
		Assignment{Agent: "a", Scope: "s", Level: "verified"},
		Assignment{Agent: "a", Scope: "t", Level: "privileged"},
		Assignment{Agent: "b", Scope: "s", Level: "privileged"},
	)
	if got := len(g.Assignments()); got != 4 {
		t.Errorf("len(Assignments()) = %d, want 4", got)
	}
}

func TestGateAccessors(t *testing.T) {
	p := mustPolicy(t, AumOSLadder(), nil, "")
	g := mustGate(t, p)
	if g.Policy() != p {
		t.Errorf("Policy() = %p, want %p", g.Policy(), p)
	}
	if g.Ladder() != AumOSLadder() {
		t.Errorf("Ladder() = %v, want %v", g.Ladder(), AumOSLadder())
	}
	if got := g.Assignments(); got == nil || len(got) != 0 {
		t.Errorf("Assignments() of empty gate = %#v, want empty non-nil", got)
	}
}

func TestReasonString(t *testing.T) {
	tests := []struct {
		r    Reason
		want string
	}{
		{ReasonAllowed, "assigned level meets the required level"},
		{ReasonInsufficient, "assigned level is below the required level"},
		{ReasonExpired, "assignment expired and the lowest level is below the required level"},
		{ReasonUnassigned, "agent has no assigned trust level"},
		{ReasonNoRule, "no trust rule covers the tool"},
		{Reason(5), "trust.Reason(5)"},
		{Reason(255), "trust.Reason(255)"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("Reason(%d).String() = %q, want %q", uint8(tt.r), got, tt.want)
		}
	}
}

func TestDecisionString(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "fs.read", Level: "verified"}}, "")
	g := mustGate(t, p,
		Assignment{Agent: "hi", Level: "privileged"},
		Assignment{Agent: "lo", Level: "public"},
		Assignment{Agent: "tmp", Level: "privileged", Expires: exp},
	)
	tests := []struct {
		req  Request
		want string
	}{
		{Request{Agent: "hi", Tool: "fs.read"},
			`allowed: agent "hi" tool "fs.read": assigned level meets the required level (assigned privileged, required verified)`},
		{Request{Agent: "lo", Tool: "fs.read"},
			`denied: agent "lo" tool "fs.read": assigned level is below the required level (assigned public, required verified)`},
		{Request{Agent: "tmp", Tool: "fs.read"},
			`denied: agent "tmp" tool "fs.read": assignment expired and the lowest level is below the required level (assigned public, required verified)`},
		{Request{Agent: "nobody", Tool: "fs.read"},
			`denied: agent "nobody" tool "fs.read": agent has no assigned trust level`},
		{Request{Agent: "hi", Tool: "shell"},
			`denied: agent "hi" tool "shell": no trust rule covers the tool`},
		{Request{Agent: "hi\n", Tool: "x\x1b"},
			`denied: agent "hi\n" tool "x\x1b": agent has no assigned trust level`},
	}
	for _, tt := range tests {
		if got := g.CheckAt(tt.req, exp).String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}

	var zero Decision
	if got := zero.RequiredName(); got != "" {
		t.Errorf("zero Decision: RequiredName() = %q, want \"\"", got)
	}
	if got := zero.AssignedName(); got != "" {
		t.Errorf("zero Decision: AssignedName() = %q, want \"\"", got)
	}
	if zero.Allowed {
		t.Errorf("zero Decision: Allowed = true, want false")
	}
}

// The policy is fixed for the life of the gate; assignments change.
func TestCheckRace(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{
		{Tool: "t", Level: "verified"},
		{Tool: "p*", Level: "verified"},
	}, "")
	g := mustGate(t, p, Assignment{Agent: "steady", Level: "verified"})

	// The agent "a" flips between levels and no assignment at all; in scope
	// "s" it also has a scoped assignment that comes and goes.
	legal := func(d Decision) bool {
		switch {
		case d.Allowed:
			return d.Reason == ReasonAllowed && d.Assigned >= d.Required && d.AssignedName() != "" && !d.Expired
		case d.Reason == ReasonInsufficient:
			return d.Assigned < d.Required && d.AssignedName() == "public"
		case d.Reason == ReasonUnassigned:
			return d.AssignedName() == ""
		}
		return false
	}

	var done atomic.Bool
	var checks atomic.Int64
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			reqs := []Request{
				{Agent: "a", Tool: "t"},
				{Agent: "a", Scope: "s", Tool: "p1"},
				{Agent: "a", Scope: "other", Tool: "t"},
			}
			for n := 0; !done.Load() || n < 1000; n++ {
				req := reqs[(n+i)%len(reqs)]
				d := g.Check(req)
				if !legal(d) {
					t.Errorf("Check(%+v) = %+v, not a legal outcome", req, d)
					return
				}
				if d.Agent != req.Agent || d.Scope != req.Scope || d.Tool != req.Tool {
					t.Errorf("Check(%+v) echoes %q, %q, %q", req, d.Agent, d.Scope, d.Tool)
					return
				}
				if d := g.Check(Request{Agent: "steady", Tool: "t"}); !d.Allowed {
					t.Errorf("steady agent denied while others change: %v", d)
					return
				}
				checks.Add(1)
			}
		})
	}
	var writers sync.WaitGroup
	for i := range 2 {
		writers.Go(func() {
			levels := []string{"public", "verified", "privileged"}
			scope := ""
			if i == 1 {
				scope = "s"
			}
			for n := range 2000 {
				switch n % 4 {
				case 3:
					g.Revoke("a", scope)
				default:
					if err := g.Assign(Assignment{Agent: "a", Scope: scope, Level: levels[n%3]}); err != nil {
						t.Errorf("Assign: %v", err)
						return
					}
				}
				_ = g.Assignments()
				_, _ = g.Assignment("a", scope)
			}
		})
	}
	writers.Wait()
	done.Store(true)
	wg.Wait()
	if checks.Load() == 0 {
		t.Errorf("no checks ran")
	}
	// The steady assignment survived all the writes.
	if a, ok := g.Assignment("steady", ""); !ok || a.Level != "verified" {
		t.Errorf("Assignment(\"steady\", \"\") = %+v, %v; want level verified", a, ok)
	}
}

func TestCheckAllocs(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{
		{Tool: "fs.read", Level: "verified"},
		{Tool: "github/*", Level: "verified"},
		{Tool: "*.delete", Level: "privileged"},
	}, "")
	exp := time.Now().Add(time.Hour)
	g := mustGate(t, p,
		Assignment{Agent: "agent-7", Level: "verified"},
		Assignment{Agent: "agent-7", Scope: "s", Level: "privileged"},
		Assignment{Agent: "timed", Level: "verified", Expires: exp},
	)
	tests := []struct {
		name string
		req  Request
	}{
		{"exact", Request{Agent: "agent-7", Tool: "fs.read"}},
		{"pattern", Request{Agent: "agent-7", Tool: "github/create_issue"}},
		{"scoped fallback", Request{Agent: "agent-7", Scope: "other", Tool: "fs.read"}},
		{"scoped", Request{Agent: "agent-7", Scope: "s", Tool: "fs.delete"}},
		{"expiring", Request{Agent: "timed", Tool: "fs.read"}},
		{"no rule", Request{Agent: "agent-7", Tool: "shell"}},
		{"unassigned", Request{Agent: "nobody", Tool: "fs.read"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			allocs := testing.AllocsPerRun(1000, func() { d = g.Check(tt.req) })
			if allocs != 0 {
				t.Errorf("Check allocates %v times per call, want 0", allocs)
			}
			_ = d
		})
	}
}

func FuzzCheck(f *testing.F) {
	f.Add("agent-7", "", "fs.read", "verified")
	f.Add("a:b", "c", "github/x", "privileged")
	f.Add("a", "b:c", "x.delete", "public")
	f.Add("", "", "", "")
	f.Add("a\x00", "s", "*", "public")
	f.Add("é", "\xff", "fs.*", "admin")
	p, err := NewPolicy(DefaultLadder(), []Rule{
		{Tool: "fs.read", Level: "public"},
		{Tool: "fs.*", Level: "verified"},
		{Tool: "github/*", Level: "verified"},
		{Tool: "*.delete", Level: "privileged"},
	}, "")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, agent, scope, tool, level string) {
		g, err := NewGate(p, Assignment{Agent: "fixed", Scope: "fixed-scope", Level: "privileged"})
		if err != nil {
			t.Fatal(err)
		}
		req := Request{Agent: agent, Scope: scope, Tool: tool}
		before := g.Check(req)
		if before.Reason != ReasonUnassigned && !(agent == "fixed" && scope == "fixed-scope") {
			t.Fatalf("before Assign: Check(%+v) = %v, want unassigned", req, before)
		}

		a := Assignment{Agent: agent, Scope: scope, Level: level}
		if err := g.Assign(a); err != nil {
			if err2 := g.Validate(a); err2 == nil {
				t.Errorf("Assign failed (%v) but Validate accepted %+v", err, a)
			}
			if got := g.Check(req); got != before {
				t.Errorf("failed Assign changed the decision from %v to %v", before, got)
			}
			return
		}
		if agent == "" {
			t.Errorf("Assign accepted an empty agent")
		}
		got, ok := g.Assignment(agent, scope)
		if !ok || got != a {
			t.Errorf("Assignment(%q, %q) = %+v, %v; want %+v", agent, scope, got, ok, a)
		}
		if agent != "fixed" || scope != "fixed-scope" {
			if d := g.Check(Request{Agent: "fixed", Scope: "fixed-scope", Tool: "fs.read"}); d.AssignedName() != "privileged" {
				t.Errorf("Assign(%+v) changed another agent: %v", a, d)
			}
		}

		d := g.Check(req)
		if d.Reason == ReasonUnassigned {
			t.Fatalf("after Assign(%+v): Check(%+v) = %v", a, req, d)
		}
		if got := d.AssignedName(); got != level {
			t.Errorf("AssignedName() = %q, want %q", got, level)
		}
		required, hasRule := p.Required(tool)
		switch {
		case !hasRule:
			if d.Allowed || d.Reason != ReasonNoRule {
				t.Errorf("tool %q has no rule but Check = %v", tool, d)
			}
		case d.Assigned >= required:
			if !d.Allowed || d.Reason != ReasonAllowed || d.Required != required {
				t.Errorf("Check = %v, want allowed at required %d", d, required)
			}
		default:
			if d.Allowed || d.Reason != ReasonInsufficient || d.Required != required {
				t.Errorf("Check = %v, want insufficient at required %d", d, required)
			}
		}
		if again := g.Check(req); again != d {
			t.Errorf("second Check = %v, want %v", again, d)
		}
	})
}

func benchGate(b *testing.B) *Gate {
	b.Helper()
	p := mustPolicy(b, DefaultLadder(), []Rule{
		{Tool: "fs.read", Level: "verified"},
		{Tool: "fs.write", Level: "privileged"},
		{Tool: "shell", Level: "privileged"},
		{Tool: "github/*", Level: "verified"},
		{Tool: "*.delete", Level: "privileged"},
		{Tool: "slack/[a-z]*", Level: "public"},
	}, "")
	return mustGate(b, p,
		Assignment{Agent: "agent-7", Level: "verified"},
		Assignment{Agent: "agent-8", Level: "privileged"},
		Assignment{Agent: "agent-7", Scope: "team-a", Level: "privileged"},
	)
}

func BenchmarkCheckExact(b *testing.B) {
	g := benchGate(b)
	req := Request{Agent: "agent-7", Tool: "fs.read"}
	b.ReportAllocs()
	for b.Loop() {
		if d := g.Check(req); !d.Allowed {
			b.Fatalf("Check = %v, want allowed", d)
		}
	}
}

func BenchmarkCheckPattern(b *testing.B) {
	g := benchGate(b)
	req := Request{Agent: "agent-7", Tool: "github/repos/create_issue"}
	b.ReportAllocs()
	for b.Loop() {
		if d := g.Check(req); !d.Allowed {
			b.Fatalf("Check = %v, want allowed", d)
		}
	}
}

func BenchmarkCheckParallel(b *testing.B) {
	g := benchGate(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		reqs := []Request{
			{Agent: "agent-7", Tool: "fs.read"},
			{Agent: "agent-7", Scope: "team-a", Tool: "fs.write"},
			{Agent: "agent-8", Tool: "github/repos/list"},
		}
		i := 0
		for pb.Next() {
			if d := g.Check(reqs[i%len(reqs)]); !d.Allowed {
				b.Errorf("Check = %v, want allowed", d)
				return
			}
			i++
		}
	})
}

// BenchmarkBaselineMapLookup is one lookup in a string-keyed map, for
// reading the Check figures against this machine: Check makes two.
func BenchmarkBaselineMapLookup(b *testing.B) {
	m := map[string]Level{"fs.read": 1, "fs.write": 2, "shell.exec": 2}
	key := "fs.read"
	var sink Level
	for b.Loop() {
		sink += m[key]
	}
	runtime.KeepAlive(sink)
}

// A denial for an unassigned agent still names the level the tool
// requires, so its audit record is true; a tool without a rule names none.
func TestUnassignedDecisionNamesRequiredLevel(t *testing.T) {
	p := mustPolicy(t, DefaultLadder(), []Rule{{Tool: "admin.*", Level: "privileged"}}, "")
	g := mustGate(t, p)
	d := g.Check(Request{Agent: "mallory", Tool: "admin.reboot"})
	if d.Reason != ReasonUnassigned || !d.HasRule || d.RequiredName() != "privileged" || d.HasAssignment || d.AssignedName() != "" {
		t.Errorf("Check = %+v, required %q assigned %q; want unassigned, required privileged, no assignment",
			d, d.RequiredName(), d.AssignedName())
	}
	d = g.Check(Request{Agent: "mallory", Tool: "other"})
	if d.HasRule || d.RequiredName() != "" {
		t.Errorf("tool without a rule: HasRule %v, RequiredName %q; want false, \"\"", d.HasRule, d.RequiredName())
	}
}
