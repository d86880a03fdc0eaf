package agentsec_test

import (
	"context"
	"crypto/sha256"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/trust"
)

func benchStack(b *testing.B) *agentsec.Stack { return benchStackVersion(b, "") }

// benchStackVersion is benchStack with a configuration Version, which
// every call's record then names.
func benchStackVersion(b *testing.B, version string) *agentsec.Stack {
	b.Helper()
	s, err := agentsec.New(agentsec.Config{
		Version: version,
		TrustGate: agentsec.TrustGateConfig{
			ToolName: "file-reader", RequiredLevel: "verified",
			Agents: []trust.Assignment{{Agent: "agent-7", Level: "verified"}},
		},
		// Limits no benchmark reaches.
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 62, CallLimit: 1 << 62},
		AuditNamespace: "bench",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func noop(context.Context) (int64, error) { return 42, nil }

// BenchmarkGuard is one whole governed call around a no-op tool: trust
// check, reservation, commit and the hashed audit append.
func BenchmarkGuard(b *testing.B) { guardLoop(b, benchStack(b)) }

// guardLoop calls Guard on s, the same call, until b is done.
func guardLoop(b *testing.B, s *agentsec.Stack) {
	ctx := context.Background()
	req := agentsec.Request{Agent: "agent-7", Session: "session-1", Tool: "file-reader"}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Guard(ctx, req, noop); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGuardConfigVersion is BenchmarkGuard with a configuration
// Version, as agentsec serve has: the price of naming the configuration
// on every call's record. Compare with BenchmarkGuard in the same run.
func BenchmarkGuardConfigVersion(b *testing.B) {
	guardLoop(b, benchStackVersion(b, "sha256:4f2a9c0e71d3b8a5"))
}

// BenchmarkGuardParallel runs Guard from GOMAXPROCS goroutines, each on
// its own session, all appending to the one audit log.
func BenchmarkGuardParallel(b *testing.B) {
	s := benchStack(b)
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := agentsec.Request{Agent: "agent-7", Session: "session-" + strconv.FormatInt(next.Add(1), 10), Tool: "file-reader"}
		for pb.Next() {
			if err := s.Guard(ctx, req, noop); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGuardDenied is a call the trust gate refuses, which is still
// recorded.
func BenchmarkGuardDenied(b *testing.B) {
	s := benchStack(b)
	ctx := context.Background()
	req := agentsec.Request{Agent: "agent-8", Session: "session-1", Tool: "file-reader"}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Guard(ctx, req, noop); err == nil {
			b.Fatal("unassigned agent allowed")
		}
	}
}

// Baselines, measured in the same run so the figures above can be read
// against this machine.

// BenchmarkBaselineSHA256Record hashes 300 bytes, about one encoded
// tool.call record: the least any hashed audit append costs.
func BenchmarkBaselineSHA256Record(b *testing.B) {
	data := make([]byte, 300)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		sink = sha256.Sum256(data)
	}
}

var sink [32]byte
