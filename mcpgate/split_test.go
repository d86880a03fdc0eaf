package mcpgate

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"testing"
)

var splitSeeds = []string{
	`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"noop","arguments":{}}}`,
	`{"jsonrpc":"2.0","id":"a","result":{"content":[{"type":"text","text":"ok \"quoted\" \\ back"}]}}`,
	` { "a" : 1 , "b" : [ 1 , { "c" : null } ] , "a" : "last" } `,
	`{}`, `{ }`, `null`, `[]`, `"x"`, `{"a":1}x`, `{"a":}`, `{"\u006dethod":"x"}`,
	`{"a":-1.5e+10,"b":true,"c":false,"d":null,"e":"","f":{},"g":[]}`, `{"a":-1.5e700,"b":1}`,
	"{\"k\xff\":1,\"method\":\"m\"}", `{"a":"\ud800"}`, "{\"a\":1}\n",
	`{"method":"tools/call","Method":"other","METHOD":"x"}`,
	`{"\u003c&>":1,"a\"b":2,"\u2028":3,"tab\there":4,"é":"<b>"}`,
	`{"s":"plain","e":"esc\"aped\u00e9","u":"\ud800","n":null,"a":[1,"two",{"t":3},[]],"o":{"k":"v","\u006b":"w"},"x":[ ]}`,
}

// splitObject must decode exactly as json.Unmarshal into a map does, or
// say it can't: a message must mean to the gateway what it means to the
// servers behind it.
func FuzzSplitObject(f *testing.F) {
	for _, s := range splitSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(data, &want)
		for _, v := range want {
			valuesAsGoDecodes(t, v)
		}
		if wantErr == nil && want != nil {
			joinsAsGoEncodes(t, want)
		}
		// validObject trusts its input to be valid, but must not panic on
		// any; on a valid object it decodes as json.Unmarshal does.
		if got, err := validObject(bytes.Clone(data)); wantErr == nil && want != nil && json.Valid(data) {
			if err != nil || !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
				t.Fatalf("validObject(%q) = %q, %v; json.Unmarshal %q", data, got, err, want)
			}
		}
		in := bytes.Clone(data)
		got, ok := splitObject(in)
		if !ok {
			return
		}
		if wantErr != nil {
			t.Fatalf("splitObject(%q) decoded what json.Unmarshal refuses: %v", data, wantErr)
		}
		if !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			t.Fatalf("splitObject(%q) = %q, json.Unmarshal %q", data, got, want)
		}
		clear(in) // the values must not share the caller's buffer
		if !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			t.Fatalf("splitObject(%q)'s values changed with its input", data)
		}
	})
}

// joinsAsGoEncodes checks joinObject against json.Marshal: the same
// members, in the same order, each value as it was.
func joinsAsGoEncodes(t *testing.T, m map[string]json.RawMessage) {
	joined := joinObject(m)
	var back map[string]json.RawMessage
	if err := json.Unmarshal(joined, &back); err != nil {
		t.Fatalf("joinObject(%q) = %q, which does not decode: %v", m, joined, err)
	}
	if !maps.EqualFunc(back, m, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
		t.Fatalf("joinObject(%q) = %q, which decodes to %q", m, joined, back)
	}
	marshalled, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	// Numbers as they are written: a float64 can't hold -1.5e700.
	decode := func(data []byte) (v any, err error) {
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		err = d.Decode(&v)
		return v, err
	}
	a, errA := decode(joined)
	b, errB := decode(marshalled)
	if errA != nil || errB != nil || !reflect.DeepEqual(a, b) {
		t.Fatalf("joinObject(%q) = %q, json.Marshal %q", m, joined, marshalled)
	}
}

// valuesAsGoDecodes checks the splitters of values of a decoded object —
// valid JSON — against json.Unmarshal: as a string, an array's elements,
// an object's members.
func valuesAsGoDecodes(t *testing.T, v json.RawMessage) {
	var s string
	errS := json.Unmarshal(v, &s)
	if got, err := stringValue(v); (err == nil) != (errS == nil) || got != s {
		t.Fatalf("stringValue(%q) = %q, %v; json.Unmarshal %q, %v", v, got, err, s, errS)
	}
	var elems []json.RawMessage
	if json.Unmarshal(v, &elems) == nil && elems != nil {
		got := elements(v)
		if len(got) != len(elems) {
			t.Fatalf("elements(%q) = %q, json.Unmarshal %q", v, got, elems)
		}
		for i := range got {
			if !bytes.Equal(got[i], elems[i]) {
				t.Fatalf("elements(%q) = %q, json.Unmarshal %q", v, got, elems)
			}
		}
	}
	var m map[string]json.RawMessage
	errM := json.Unmarshal(v, &m)
	got, err := validObject(v)
	if (err == nil) != (errM == nil) || !maps.EqualFunc(got, m, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
		t.Fatalf("validObject(%q) = %q, %v; json.Unmarshal %q, %v", v, got, err, m, errM)
	}
}

func TestSplitObjectTakesTheCommonMessages(t *testing.T) {
	for _, s := range splitSeeds[:3] {
		if _, ok := splitObject([]byte(s)); !ok {
			t.Errorf("splitObject(%q) fell back to the slow path", s)
		}
	}
	// Escaped keys go the slow way, which unescapes them.
	if _, ok := splitObject([]byte(`{"\u006dethod":"x"}`)); ok {
		t.Error("a key with an escape took the fast path")
	}
	m, err := decodeObject([]byte(`{"\u006dethod":"x"}`))
	if err != nil || string(m["method"]) != `"x"` {
		t.Errorf("decodeObject of an escaped key: %q, %v", m, err)
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	msgs := map[string][]byte{
		"request":  []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"noop","arguments":{"path":"/tmp/x","n":3}}}`),
		"response": []byte(`{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}],"structuredContent":{"a":1}}}`),
	}
	for name, msg := range msgs {
		b.Run(name+"/map", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m map[string]json.RawMessage
				if err := json.Unmarshal(msg, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/split", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeObject(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// CountResult never counts less than either reading of a result — keys
// exact, as JavaScript's and Python's clients read it, or without regard
// to case, as Go's do.
func FuzzCountResult(f *testing.F) {
	for _, s := range []string{
		`{"content":[{"type":"text","text":"hello world"}]}`,
		`{"content":[{"type":"text","text":"a","TEXT":""}],"structuredContent":{"x":1}}`,
		`{"Content":[{"Type":"text","Text":"b"}],"content":[]}`,
		`{"content":[null,{"type":"image"}]}`, `null`, `[]`, `{"content":{}}`,
	} {
		f.Add([]byte(s))
	}
	c := &TiktokenCounter{}
	f.Fuzz(func(t *testing.T, result []byte) {
		n, err := c.CountResult(result)
		if err != nil {
			return
		}
		rc, err := resultText(result)
		if err != nil {
			t.Fatalf("CountResult(%q) counted what resultText refuses: %v", result, err)
		}
		if exact, err := c.count(rc.texts, rc.structured); err == nil && n < exact+rc.media {
			t.Fatalf("CountResult(%q) = %d, less than the exact reading's %d", result, n, exact)
		}
		var r struct {
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
			StructuredContent json.RawMessage `json:"structuredContent"`
		}
		if json.Unmarshal(result, &r) == nil {
			var goTexts []string
			for _, item := range r.Content {
				if item.Type == "text" {
					goTexts = append(goTexts, item.Text)
				}
			}
			if asGo, err := c.count(goTexts, r.StructuredContent); err == nil && n < asGo {
				t.Fatalf("CountResult(%q) = %d, less than Go's reading's %d", result, n, asGo)
			}
		}
	})
}

func BenchmarkCountResult(b *testing.B) {
	item := `{"type":"text","text":"The quick brown fox jumps over the lazy dog; 0123456789 and some more words to count."}`
	result := []byte(`{"content":[` + item + `,` + item + `,` + item + `,{"type":"image","data":"AAAA","mimeType":"image/png"}],"structuredContent":{"rows":[1,2,3],"ok":true}}`)
	c := &TiktokenCounter{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CountResult(result); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSplitObjectMakesNoKeys holds what splitting a message allocates:
// its copy and its map, and no string for any of MCP's own keys.
func TestSplitObjectMakesNoKeys(t *testing.T) {
	// AllocsPerRun counts every goroutine's allocations: the fewest of a
	// few tries is this code's, whatever else runs meanwhile.
	allocs := func(f func()) float64 {
		least := testing.AllocsPerRun(100, f)
		for range 9 {
			least = min(least, testing.AllocsPerRun(100, f))
		}
		return least
	}
	for _, msg := range []string{
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"noop","arguments":{}}}`,
		`{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}],"structuredContent":{},"isError":false}}`,
	} {
		data := []byte(msg)
		if n := allocs(func() { decodeObject(data) }); n > 3 {
			t.Errorf("decodeObject(%s): %v allocations, want at most 3 (the copy and the map)", msg, n)
		}
		m, _ := decodeObject(data)
		if n := allocs(func() { validObject(m["params"]); validObject(m["result"]) }); n > 2 {
			t.Errorf("validObject of %s's params or result: %v allocations, want at most 2 (the map)", msg, n)
		}
	}
}
