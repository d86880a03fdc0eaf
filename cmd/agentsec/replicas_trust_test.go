package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// api sends a decision API request to replica r with token and returns
// the status and the decoded answer.
func (f *fleet) api(r *url.URL, method, path, token string, body any) (int, map[string]any) {
	f.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, r.Scheme+"://"+r.Host+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := fleetTransport.RoundTrip(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// untilAllowed polls replica r's trust check of the fleet's agent calling
// "read" until it answers want, and returns how long that took.
func (f *fleet) untilAllowed(r *url.URL, want bool) time.Duration {
	f.t.Helper()
	start := time.Now()
	for {
		status, out := f.api(r, "POST", "/v1/trust/check", fleetToken, map[string]any{"tool": "read"})
		if status != http.StatusOK {
			f.t.Fatalf("trust check: %d %v", status, out)
		}
		if out["allowed"] == want {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			f.t.Fatalf("replica %s: the check still answers allowed=%v after 10 s", r.Host, !want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An operator changes a level on one replica: the change is in force on
// the other within a second — for the MCP calls it governs too — and on
// a replica started afterwards.
func TestTrustChangeReachesEveryReplica(t *testing.T) {
	f := newFleet(t, 2, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := f.endpoints()[0], f.endpoints()[1]

	status, out := f.api(a, "POST", "/v1/trust/revocations", fleetOperatorToken, map[string]any{"agent": "bot", "reason": "suspended"})
	if status != http.StatusOK {
		t.Fatalf("revoke on replica a: %d %v", status, out)
	}
	took := f.untilAllowed(b, false)
	t.Logf("the revocation was in force on replica b %v after replica a answered", took)
	if took > time.Second {
		t.Errorf("the revocation took %v to reach replica b, more than a second", took)
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "direct", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: b.String(),
		HTTPClient: &http.Client{Transport: &balancer{f: &fleet{t: t, replicas: []*replica{{endpoint: b}}}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read", Arguments: map[string]any{"text": "after-revoke"}})
	if err != nil || !res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "no assigned trust level") {
		t.Errorf("a call of the revoked agent through replica b: %+v, %v", res, err)
	}
	if n := f.upstream.reached("after-revoke"); n != 0 {
		t.Errorf("the revoked agent's call reached the server %d times", n)
	}

	status, out = f.api(b, "POST", "/v1/trust/assignments", fleetOperatorToken, map[string]any{"agent": "bot", "level": "verified", "reason": "reinstated"})
	if status != http.StatusOK {
		t.Fatalf("assign on replica b: %d %v", status, out)
	}
	took = f.untilAllowed(a, true)
	t.Logf("the assignment was in force on replica a %v after replica b answered", took)
	if took > time.Second {
		t.Errorf("the assignment took %v to reach replica a, more than a second", took)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "read", Arguments: map[string]any{"text": "after-assign"}})
	if err != nil || res.IsError {
		t.Errorf("a call of the reinstated agent: %+v, %v", res, err)
	}

	// A replica started now puts the change back into force from the log.
	c := f.start()
	f.mu.Lock()
	f.replicas = append(f.replicas, c)
	f.mu.Unlock()
	status, out = f.api(c.endpoint, "GET", "/v1/trust/assignments?agent=bot", fleetOperatorToken, nil)
	list, _ := out["assignments"].([]any)
	if status != http.StatusOK || len(list) != 1 || list[0].(map[string]any)["level"] != "verified" {
		t.Errorf("a new replica's assignments of bot: %d %v", status, out)
	}
	f.stop()
	verifyFleetLog(t, f)
}
