package httpapi

import (
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// openAPIDoc is the part of the OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

type openAPIOperation struct {
	OperationID string                     `json:"operationId"`
	Responses   map[string]json.RawMessage `json:"responses"`
	Security    *[]map[string][]string     `json:"security"`
}

// TestOpenAPIMatchesRoutes fails if a route is served but not documented,
// or documented but not served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc openAPIDoc
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi.json is OpenAPI %q, want 3.1.x", doc.OpenAPI)
	}
	documented := map[string]openAPIOperation{}
	for path, item := range doc.Paths {
		for method, raw := range item {
			switch method {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
			default:
				continue // parameters, summary…
			}
			var op openAPIOperation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			documented[strings.ToUpper(method)+" "+path] = op
		}
	}
	served := map[string]route{}
	for _, rt := range routes {
		served[rt.method+" "+rt.path] = rt
	}
	for k := range served {
		if _, ok := documented[k]; !ok {
			t.Errorf("%s is served but not documented in openapi.json", k)
		}
	}
	ids := map[string]string{}
	for k, op := range documented {
		rt, ok := served[k]
		if !ok {
			t.Errorf("%s is documented in openapi.json but not served", k)
			continue
		}
		if op.OperationID == "" {
			t.Errorf("%s has no operationId", k)
		} else if other, dup := ids[op.OperationID]; dup {
			t.Errorf("%s and %s share the operationId %q", k, other, op.OperationID)
		}
		ids[op.OperationID] = k
		if len(op.Responses) == 0 {
			t.Errorf("%s documents no responses", k)
		}
		noToken := op.Security != nil && len(*op.Security) == 0
		if noToken != (rt.who == public) {
			t.Errorf("%s: documented as needing no token %v, served so %v", k, noToken, rt.who == public)
		}
		if rt.who != public {
			if _, ok := op.Responses["401"]; !ok {
				t.Errorf("%s does not document its 401", k)
			}
		}
	}
	// And the server routes each documented operation to its handler.
	s := &Server{}
	s.init()
	for k := range documented {
		method, path, _ := strings.Cut(k, " ")
		concrete := strings.NewReplacer("{session}", "s", "{id}", "x", "{seq}", "1").Replace(path)
		if _, pattern := s.mux.Handler(httptest.NewRequest(method, concrete, nil)); pattern != method+" "+path {
			t.Errorf("%s %s is routed to %q", method, concrete, pattern)
		}
	}
}

// TestProblemCodesDocumented: every stable code is in the document's enum
// of codes.
func TestProblemCodesDocumented(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Enum []string `json:"enum"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	enum := doc.Components.Schemas["Problem"].Properties["code"].Enum
	for code := range titles {
		if !slices.Contains(enum, code) {
			t.Errorf("code %q is not in components.schemas.Problem.properties.code.enum", code)
		}
	}
	if len(enum) != len(titles) {
		t.Errorf("the document lists %d codes, the server %d", len(enum), len(titles))
	}
}
