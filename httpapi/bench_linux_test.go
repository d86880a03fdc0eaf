package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"github.com/agentsec/agentsec/audit/audittest"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/trust"
)

// benchServer is the decision API of a Stack whose log is SQLite on disk
// (durable), on a server that also answers /bare with {} and nothing
// else: the floor of a round trip to this server.
type benchServer struct {
	url    string
	client *http.Client
	dir    string
	stack  *agentsec.Stack
}

func newBenchServer(b *testing.B) *benchServer {
	b.Helper()
	dir := b.TempDir()
	signer, _, err := audit.GenerateKey("bench")
	if err != nil {
		b.Fatal(err)
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{ToolName: "read", RequiredLevel: "public",
			Agents: []trust.Assignment{{Agent: "alice", Level: "verified"}}},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1 << 50, CallLimit: 1 << 50},
		AuditNamespace: "bench",
		Audit:          agentsec.AuditConfig{Path: filepath.Join(dir, "audit.db"), SignerKey: signer},
	})
	if err != nil {
		b.Fatal(err)
	}
	api := &httpapi.Server{Stack: stack, Agents: []httpapi.Credential{
		{TokenSHA256: sha256.Sum256([]byte(aliceToken)), Agent: "alice", Scopes: []string{""}}}}
	mux := http.NewServeMux()
	mux.Handle("/v1/", api)
	mux.HandleFunc("/bare", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}\n"))
	})
	srv := httptest.NewServer(mux)
	b.Cleanup(func() {
		srv.Close()
		api.Close()
		stack.Close()
	})
	return &benchServer{url: srv.URL, client: srv.Client(), dir: dir, stack: stack}
}

// post sends a body and returns the answer's body, failing b on an
// unexpected status.
func (s *benchServer) post(b *testing.B, path string, body []byte, want int) []byte {
	req, _ := http.NewRequest("POST", s.url+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+aliceToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Fatalf("POST %s: %d %s", path, resp.StatusCode, out)
	}
	return out
}

// interleaved runs each measured operation and its baseline alternately,
// timing every one, and reports their medians and the ratio of the
// medians: taken side by side, both see the same noise of a shared
// machine.
func interleaved(b *testing.B, op, baseline func()) {
	var ops, bases []time.Duration
	for i := 0; b.Loop(); i++ {
		// Alternate which goes first, so neither always follows the other.
		first, second, fd, sd := op, baseline, &ops, &bases
		if i%2 == 1 {
			first, second, fd, sd = baseline, op, &bases, &ops
		}
		t0 := time.Now()
		first()
		t1 := time.Now()
		second()
		*fd, *sd = append(*fd, t1.Sub(t0)), append(*sd, time.Since(t1))
	}
	mo, mb := audittest.Median(ops), audittest.Median(bases)
	b.ReportMetric(float64(mo.Nanoseconds())/1e3, "µs/op-median")
	b.ReportMetric(float64(mb.Nanoseconds())/1e3, "µs/baseline-median")
	b.ReportMetric(float64(mo)/float64(mb), "ratio")
}

// BenchmarkTrustCheck is a trust check through the API, against the
// same request to a handler on the same server that answers {}, taken
// alternately. Goal: ratio ≤ 1.3.
func BenchmarkTrustCheck(b *testing.B) {
	s := newBenchServer(b)
	body := []byte(`{"tool":"read"}`)
	interleaved(b,
		func() { s.post(b, "/v1/trust/check", body, http.StatusOK) },
		func() { s.post(b, "/bare", body, http.StatusOK) })
}

// BenchmarkGuard is one governed call through the API — begin, then end,
// whose record is durable (SQLite, fdatasync) before the answer —
// against its floor: two round trips to the bare handler and one
// fdatasync of 256 bytes in the log's directory, taken alternately.
// Goal: ratio ≤ 1.5. Append, a durable append of a call's record
// straight to the log, against one fdatasync, shows how much of guard
// is the log's.
func BenchmarkGuard(b *testing.B) {
	s := newBenchServer(b)
	begin := []byte(`{"tool":"read","session":"bench"}`)
	end := []byte(`{"tokens":12}`)
	f, err := os.Create(filepath.Join(s.dir, "sync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rec := make([]byte, 256)
	fdatasync := func() {
		if _, err := f.WriteAt(rec, 0); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("api", func(b *testing.B) {
		interleaved(b,
			func() {
				var c struct {
					CallID string `json:"call_id"`
				}
				json.Unmarshal(s.post(b, "/v1/calls", begin, http.StatusCreated), &c)
				s.post(b, "/v1/calls/"+c.CallID+"/end", end, http.StatusOK)
			},
			func() {
				s.post(b, "/bare", begin, http.StatusOK)
				fdatasync()
				s.post(b, "/bare", end, http.StatusOK)
			})
	})
	b.Run("append", func(b *testing.B) {
		ctx := context.Background()
		rec := audit.Record{Event: "tool.call", Agent: "alice", Session: "alice/bench", Tool: "read",
			Outcome: audit.OutcomeAllowed, Reason: "assigned level meets the required level", Tokens: 12}
		interleaved(b,
			func() {
				if _, err := s.stack.Audit.Log(ctx, rec); err != nil {
					b.Fatal(err)
				}
			},
			fdatasync)
	})
}
