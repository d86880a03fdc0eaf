package audit_test

import (
	"testing"

	"github.com/agentsec/agentsec/audit"
)

// benchRecord is a typical tool-call record: eight fields set by the
// caller, Time and Namespace by the log.
func benchRecord() audit.Record {
	return audit.Record{
		Event:         "tool.call",
		Agent:         "agent-7",
		Session:       "session-5f2c9a41",
		Tool:          "file-reader",
		Outcome:       audit.OutcomeAllowed,
		RequiredLevel: "verified",
		AssignedLevel: "verified",
		Tokens:        1234,
	}
}

func BenchmarkLog(b *testing.B) {
	l := newLog(b, audit.NewMemoryStore(), audit.Options{Namespace: "bench"})
	rec := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Log(b.Context(), rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLogParallel(b *testing.B) {
	l := newLog(b, audit.NewMemoryStore(), audit.Options{Namespace: "bench"})
	rec := benchRecord()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Log(b.Context(), rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkEncodeRecord(b *testing.B) {
	rec := benchRecord()
	rec.Time, rec.Namespace = t0, "bench"
	buf, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, err = audit.EncodeRecord(buf[:0], &rec)
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	const n = 10_000
	l := newLog(b, audit.NewMemoryStore(), audit.Options{Namespace: "bench"})
	rec := benchRecord()
	for range n {
		if _, err := l.Log(b.Context(), rec); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	verified := 0
	for b.Loop() {
		got, err := l.Verify(b.Context())
		if err != nil || got != n {
			b.Fatalf("Verify = %d, %v; want %d, nil", got, err, n)
		}
		verified += int(got)
	}
	b.ReportMetric(float64(verified)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkVerifySigned verifies a log with a checkpoint every 1,000
// records, as a log keeps by default.
func BenchmarkVerifySigned(b *testing.B) {
	const n = 10_000
	signer, verifier := newKey(b, "bench")
	s := audit.NewMemoryStore()
	l := newLog(b, s, audit.Options{Namespace: "bench", Signer: signer, Verifier: verifier, CheckpointInterval: -1})
	rec := benchRecord()
	for range n {
		if _, err := l.Log(b.Context(), rec); err != nil {
			b.Fatal(err)
		}
	}
	opts := audit.VerifyOptions{Verifier: verifier}
	b.ReportAllocs()
	verified := 0
	for b.Loop() {
		res, err := audit.Verify(b.Context(), s, opts)
		if err != nil || res.Records != n || res.Checkpoints != n/audit.DefaultCheckpointEvery {
			b.Fatalf("Verify = %+v, %v; want %d records, %d checkpoints", res, err, n, n/audit.DefaultCheckpointEvery)
		}
		verified += int(res.Records)
	}
	b.ReportMetric(float64(verified)/b.Elapsed().Seconds(), "records/s")
}
