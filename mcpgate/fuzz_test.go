package mcpgate

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
	"github.com/agentsec/agentsec/trust"
)

// FuzzFilterTools feeds arbitrary tools/list results through the filter:
// it must never panic, and whatever it lets through must list only tools
// the agent may call.
func FuzzFilterTools(f *testing.F) {
	stack, err := agentsec.New(agentsec.Config{
		TrustGate: agentsec.TrustGateConfig{
			Rules:  []trust.Rule{{Tool: "ok.*", Level: "public"}, {Tool: "secret", Level: "privileged"}},
			Agents: []trust.Assignment{{Agent: "a", Level: "public"}},
		},
		Budget:         agentsec.BudgetConfig{TokenLimit: 1, CallLimit: 1},
		AuditNamespace: "fuzz",
	})
	if err != nil {
		f.Fatal(err)
	}
	defer stack.Close()
	r := &router{p: &Proxy{Stack: stack, Agent: "a"}, session: "s"}
	f.Add([]byte(`{"tools":[{"name":"ok.read"},{"name":"secret"},{"name":"other"}],"nextCursor":"x"}`))
	f.Add([]byte(`{"tools":[]}`))
	f.Add([]byte(`{"tools":null}`))
	f.Add([]byte(`{"tools":[1,"x",{"name":5}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"tools":[{"name":"ok.a","name":"secret"}]}`))
	f.Fuzz(func(t *testing.T, result []byte) {
		id, _ := jsonrpc.MakeID(int64(1))
		items, werr := r.listItems(&jsonrpc.Response{ID: id, Result: result}, listTools, &upstreamConn{})
		if werr != nil {
			return
		}
		out := r.listPage(result, listTools, items, nil)
		var got struct {
			Tools []struct {
				Name string `json:"name"`
			} `json:"tools"`
		}
		if err := json.Unmarshal(out.Result, &got); err != nil {
			t.Fatalf("filtered result %s does not decode: %v", out.Result, err)
		}
		for _, tool := range got.Tools {
			if !stack.TrustGate.Check(agentsec.Request{Agent: "a", Tool: tool.Name}).Allowed {
				t.Errorf("filter let through %q from %s", tool.Name, result)
			}
		}
	})
}

// FuzzStdioFrames feeds arbitrary bytes to the stdio connection: it must
// never panic or stop early, every line it writes back must be a JSON-RPC
// error response, and every message it passes on must encode again.
func FuzzStdioFrames(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"ping"}` + "\n"))
	f.Add([]byte("{not json\n\n\r\n[1,2]\n"))
	f.Add([]byte(`{"jsonrpc":"2.0","id":{"a":1},"method":"x"}` + "\n" + `{"jsonrpc":"1.0","id":2}` + "\n"))
	f.Add([]byte(`{"jsonrpc":"2.0","id":"s","result":{}}` + "\r\n" + `{"jsonrpc":"2.0","method":""}`))
	f.Add([]byte(strings.Repeat("x", 300) + "\n" + `{"jsonrpc":"2.0","method":"notifications/initialized"}`))
	f.Fuzz(func(t *testing.T, input []byte) {
		var out bytes.Buffer
		conn := NewStdioConn(bytes.NewReader(input), &out, 256)
		defer conn.Close()
		for {
			msg, err := conn.Read(context.Background())
			if err != nil {
				if err != io.EOF {
					t.Fatalf("Read = %v, want io.EOF at the end", err)
				}
				break
			}
			if _, err := jsonrpc.EncodeMessage(msg); err != nil {
				t.Errorf("message %+v does not encode: %v", msg, err)
			}
		}
		for _, line := range bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\n")), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var r struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   *jsonrpc.Error  `json:"error"`
			}
			if err := json.Unmarshal(line, &r); err != nil || r.JSONRPC != "2.0" || r.Error == nil || len(r.ID) == 0 {
				t.Errorf("reply %q is not a JSON-RPC error response", line)
			}
		}
	})
}

// FuzzWire checks the gateway's JSON-RPC codec: what it decodes encodes
// on one line and decodes to the same message, and it agrees with the
// SDK's decoder on what a message is — except that it is stricter: it
// refuses ids with a fraction, which the SDK truncates, numeric ids of
// more than maxNumberID bytes, and trailing bytes after the message, which
// the SDK ignores. A numeric id encodes back to its very bytes.
func FuzzWire(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2]}}}`,
		`{"jsonrpc":"2.0","id":"s-1","result":{"content":[]}}`,
		`{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no","data":{"x":1}}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}`,
		"{\"jsonrpc\":\"2.0\",\"id\":2,\n\"result\":{\n\"pretty\": true\n}}",
		`{"jsonrpc":"2.0","id":1.5,"method":"x"}`,
		`{"jsonrpc":"2.0","id":9223372036854775807,"method":"x"}`,
		`{"jsonrpc":"2.0","id":-0,"result":{}}`,
		`{"jsonrpc":"2.0","id":1e3,"method":"x"}`,
		`{"jsonrpc":"2.0","id":"\u0000n:7","method":"x"}`,
		`{"jsonrpc":"2.0","id":12345678901234567890123456789012345678901234567890123456789012345,"method":"x"}`,
		`{"jsonrpc":"2.0","id":null,"result":{}}`,
		`{"jsonrpc":"1.0","id":1,"method":"x"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := decodeMessage(data)
		sdk, sdkErr := jsonrpc.DecodeMessage(data)
		if err != nil {
			if sdkErr == nil && json.Valid(data) && !fractionalID(data) && !longNumberID(data) {
				t.Fatalf("the SDK decodes %q as %+v; the gateway refuses it: %v", data, sdk, err)
			}
			return
		}
		if sdkErr != nil {
			t.Fatalf("the gateway decodes %q; the SDK refuses it: %v", data, sdkErr)
		}
		if kind(msg) != kind(sdk) {
			t.Fatalf("%q: the gateway reads a %s, the SDK a %s", data, kind(msg), kind(sdk))
		}
		enc, err := encodeMessage(msg)
		if err != nil {
			t.Fatalf("encoding %+v: %v", msg, err)
		}
		if bytes.ContainsAny(enc, "\r\n") {
			t.Fatalf("encoding %q spans lines: %q", data, enc)
		}
		again, err := decodeMessage(enc)
		if err != nil || kind(again) != kind(msg) {
			t.Fatalf("re-decoding %q: %+v, %v", enc, again, err)
		}
		// A numeric id goes back exactly as it came.
		var ids struct{ ID json.RawMessage }
		if json.Unmarshal(data, &ids) == nil && len(ids.ID) > 0 && ids.ID[0] != '"' && string(ids.ID) != "null" {
			if got := idJSON(reqOrRespID(msg)); !bytes.Equal(got, ids.ID) {
				t.Fatalf("id %s comes back as %s", ids.ID, got)
			}
		}
		switch m := msg.(type) {
		case *jsonrpc.Request:
			a := again.(*jsonrpc.Request)
			if a.ID != m.ID || a.Method != m.Method || !sameJSON(a.Params, m.Params) {
				t.Fatalf("round trip of %q: %+v, want %+v", data, a, m)
			}
		case *jsonrpc.Response:
			a := again.(*jsonrpc.Response)
			if a.ID != m.ID || !sameJSON(a.Result, m.Result) && m.Error == nil || (a.Error == nil) != (m.Error == nil) {
				t.Fatalf("round trip of %q: %+v, want %+v", data, a, m)
			}
		}
	})
}

func reqOrRespID(msg jsonrpc.Message) jsonrpc.ID {
	switch m := msg.(type) {
	case *jsonrpc.Request:
		return m.ID
	case *jsonrpc.Response:
		return m.ID
	}
	return jsonrpc.ID{}
}

func kind(msg jsonrpc.Message) string {
	switch m := msg.(type) {
	case *jsonrpc.Request:
		if m.IsCall() {
			return "request"
		}
		return "notification"
	case *jsonrpc.Response:
		return "response"
	}
	return "nothing"
}

func fractionalID(data []byte) bool {
	var m struct {
		ID any `json:"id"`
	}
	json.Unmarshal(data, &m)
	f, ok := m.ID.(float64)
	return ok && f != float64(int64(f))
}

// longNumberID reports whether a message's id is a number longer than the
// gateway takes (maxNumberID), which the SDK rounds.
func longNumberID(data []byte) bool {
	var m struct{ ID json.RawMessage }
	json.Unmarshal(data, &m)
	return len(m.ID) > maxNumberID && m.ID[0] != '"'
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y bytes.Buffer
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b) || string(a) == "{}" || string(b) == "{}"
	}
	if json.Compact(&x, a) != nil || json.Compact(&y, b) != nil {
		return false
	}
	return bytes.Equal(x.Bytes(), y.Bytes())
}
