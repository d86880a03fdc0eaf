package httpapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"

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
	return &benchServer{url: srv.URL, client: srv.Client(), dir: dir}
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

// BenchmarkTrustCheck is a trust check through the API; Bare is the same
// request to a handler on the same server that answers {}. Goal: the
// check ≤ 1.3× the bare round trip.
func BenchmarkTrustCheck(b *testing.B) {
	s := newBenchServer(b)
	body := []byte(`{"tool":"read"}`)
	b.Run("api", func(b *testing.B) {
		for b.Loop() {
			s.post(b, "/v1/trust/check", body, http.StatusOK)
		}
	})
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			s.post(b, "/bare", body, http.StatusOK)
		}
	})
}

// BenchmarkGuard is one governed call through the API — begin, then end,
// whose record is durable (SQLite, fdatasync) before the answer; Floor
// is two round trips to the bare handler and one fdatasync of 256 bytes
// in the log's directory. Goal: guard ≤ 1.5× the floor.
func BenchmarkGuard(b *testing.B) {
	s := newBenchServer(b)
	begin := []byte(`{"tool":"read","session":"bench"}`)
	end := []byte(`{"tokens":12}`)
	b.Run("api", func(b *testing.B) {
		for b.Loop() {
			var c struct {
				CallID string `json:"call_id"`
			}
			json.Unmarshal(s.post(b, "/v1/calls", begin, http.StatusCreated), &c)
			s.post(b, "/v1/calls/"+c.CallID+"/end", end, http.StatusOK)
		}
	})
	b.Run("floor", func(b *testing.B) {
		f, err := os.Create(filepath.Join(s.dir, "sync"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		rec := make([]byte, 256)
		for b.Loop() {
			s.post(b, "/bare", begin, http.StatusOK)
			if _, err := f.WriteAt(rec, 0); err != nil {
				b.Fatal(err)
			}
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			s.post(b, "/bare", end, http.StatusOK)
		}
	})
}
