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
