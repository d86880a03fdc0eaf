package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/httpapi"
	"github.com/agentsec/agentsec/trust"
)

// Tokens of the test server's callers.
const (
	aliceToken   = "alice-token"
	bobToken     = "bob-token"
	scopedToken  = "carol-staging-token"
	auditorToken = "auditor-token"
	adminToken   = "admin-token"
)

// A testServer is a decision API over a Stack whose log is signed and
// can be made to fail.
type testServer struct {
	t     testing.TB
	url   string
	stack *agentsec.Stack
	api   *httpapi.Server
	audit *audittest.FailingStore
	http  *http.Client
}

type limits struct {
	calls, tokens, callTokens int64
	// durable keeps the log in SQLite, on disk, instead of in memory
	// behind a store that can be made to fail.
	durable bool
}

func newTestServer(t testing.TB, l limits) *testServer {
	t.Helper()
	if l.calls == 0 {
		l.calls = 100
	}
	if l.tokens == 0 {
		l.tokens = 1_000_000
	}
	signer, _, err := audit.GenerateKey("test")
	if err != nil {
		t.Fatal(err)
	}
	store := &audittest.FailingStore{Store: audit.NewMemoryStore()}
	ac := agentsec.AuditConfig{Store: store, SignerKey: signer}
	if l.durable {
		ac = agentsec.AuditConfig{Path: filepath.Join(t.TempDir(), "audit.db"), SignerKey: signer, CheckpointEvery: 1 << 30}
	}
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules: []trust.Rule{{Tool: "read", Level: "public"}, {Tool: "write", Level: "verified"},
				{Tool: "deploy", Level: "privileged"}},
			Agents: []trust.Assignment{{Agent: "alice", Level: "verified"}, {Agent: "bob", Level: "verified"},
				{Agent: "carol", Level: "public"}, {Agent: "carol", Scope: "staging", Level: "privileged"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: l.tokens, CallLimit: l.calls, CallTokenLimit: l.callTokens},
		AuditNamespace: "test",
		Audit:          ac,
	})
	if err != nil {
		t.Fatal(err)
	}
	api := &httpapi.Server{Stack: stack,
		Agents: []httpapi.Credential{
			{TokenSHA256: sha256.Sum256([]byte(aliceToken)), Agent: "alice", Scopes: []string{""}},
			{TokenSHA256: sha256.Sum256([]byte(bobToken)), Agent: "bob", Scopes: []string{""}},
			{TokenSHA256: sha256.Sum256([]byte(scopedToken)), Agent: "carol", Scopes: []string{"staging"}},
		},
		Operators: []httpapi.Operator{
			{TokenSHA256: sha256.Sum256([]byte(auditorToken)), ID: "ada"},
			{TokenSHA256: sha256.Sum256([]byte(adminToken)), ID: "root", Admin: true},
		},
	}
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		api.Close()
		stack.Close()
	})
	return &testServer{t: t, url: srv.URL, stack: stack, api: api, audit: store, http: srv.Client()}
}

// A reply is an answer as a test reads it.
type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (r reply) code() string {
	c, _ := r.body["code"].(string)
	return c
}

func (r reply) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

// decisionID returns the answer's decision_id, and whether it has one.
func (r reply) decisionID() (uint64, bool) {
	f, ok := r.body["decision_id"].(float64)
	return uint64(f), ok
}

// do sends a request with token and body (a value to encode, or raw
// []byte) and decodes the answer.
func (s *testServer) do(method, path, token string, body any, headers ...string) reply {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			s.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.http.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			s.t.Fatalf("%s %s: answer is not a JSON object: %v\n%s", method, path, err, raw)
		}
	}
	if r.status >= 400 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			s.t.Errorf("%s %s: %d answered as %q, want application/problem+json", method, path, r.status, ct)
		}
	}
	return r
}

// records returns every record of the log matching f.
func (s *testServer) records(f audit.Filter) []audit.Record {
	s.t.Helper()
	var out []audit.Record
	f.Limit = audit.MaxLimit
	for {
		page, err := s.stack.Audit.Query(context.Background(), f)
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, page.Records...)
		if page.Next == "" {
			return out
		}
		f.Cursor = page.Next
	}
}

// verify checks the whole log.
func (s *testServer) verify() {
	s.t.Helper()
	if _, err := s.stack.Audit.Checkpoint(context.Background()); err != nil {
		s.t.Fatalf("signing a checkpoint: %v", err)
	}
	if _, err := s.stack.Audit.Verify(context.Background()); err != nil {
		s.t.Fatalf("the log does not verify: %v", err)
	}
}
