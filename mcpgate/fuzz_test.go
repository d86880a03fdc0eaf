package mcpgate

import (
	"encoding/json"
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
	r := &relay{p: &Proxy{Stack: stack, Agent: "a"}, session: "s"}
	f.Add([]byte(`{"tools":[{"name":"ok.read"},{"name":"secret"},{"name":"other"}],"nextCursor":"x"}`))
	f.Add([]byte(`{"tools":[]}`))
	f.Add([]byte(`{"tools":null}`))
	f.Add([]byte(`{"tools":[1,"x",{"name":5}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"tools":[{"name":"ok.a","name":"secret"}]}`))
	f.Fuzz(func(t *testing.T, result []byte) {
		id, _ := jsonrpc.MakeID(int64(1))
		out := r.filterTools(&jsonrpc.Response{ID: id, Result: result})
		if out.Error != nil {
			return
		}
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
