package mcpgate

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

// A TokenCounter says how many tokens a tool result costs.
type TokenCounter interface {
	CountResult(result json.RawMessage) (int64, error)
}

// TiktokenCounter counts the text a tool result hands to the model —
// its text content and its structured content — with a real BPE
// tokenizer whose vocabulary is embedded in the binary, so it works
// offline. The zero value uses o200k_base.
type TiktokenCounter struct {
	// Encoding is the tokenizer's encoding; empty means o200k_base.
	Encoding tokenizer.Encoding

	once  sync.Once
	codec tokenizer.Codec
	err   error
	// pieces remembers the tokens of short pieces of ASCII text, for
	// o200k_base (o200k.go), whose pieces are found without the
	// tokenizer's regular expression.
	pieces *pieceCounts
}

// CountResult implements TokenCounter. A result is read as MCP clients
// read it, and they differ: most (JavaScript's, Python's) match keys
// exactly, the last of a repeated key winning; Go's match "TEXT" for
// "text" too. A server could hide a text from one reading behind a key
// only the other takes — an empty "TEXT" after "text" — so a result
// with such keys is counted both ways and costs the more.
func (c *TiktokenCounter) CountResult(result json.RawMessage) (int64, error) {
	if err := c.load(); err != nil {
		return 0, err
	}
	texts, structured, caseless, err := resultText(result)
	if err != nil {
		return 0, fmt.Errorf("mcpgate: tool result is not a CallToolResult: %w", err)
	}
	total, err := c.count(texts, structured)
	if err != nil || !caseless {
		return total, err
	}
	var r goToolResult
	if err := json.Unmarshal(result, &r); err != nil {
		return total, nil // Go's clients can't read it: they see nothing
	}
	texts = texts[:0]
	for _, item := range r.Content {
		if item.Type == "text" {
			texts = append(texts, item.Text)
		}
	}
	asGo, err := c.count(texts, r.StructuredContent)
	return max(total, asGo), err
}

// goToolResult is a CallToolResult as Go's decoder reads it, keys matched
// without regard to case.
type goToolResult struct {
	Content []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	StructuredContent json.RawMessage `json:"structuredContent"`
}

// load loads the tokenizer, once.
func (c *TiktokenCounter) load() error {
	c.once.Do(func() {
		enc := c.Encoding
		if enc == "" {
			enc = tokenizer.O200kBase
		}
		c.codec, c.err = tokenizer.Get(enc)
		if enc == tokenizer.O200kBase {
			c.pieces = &pieceCounts{}
		}
	})
	if c.err != nil {
		return fmt.Errorf("mcpgate: loading tokenizer: %w", c.err)
	}
	return nil
}

// count counts texts and structured content.
func (c *TiktokenCounter) count(texts []string, structured json.RawMessage) (int64, error) {
	var total int64
	count := func(s string) error {
		if s == "" {
			return nil
		}
		n, err := c.countText(s)
		total += n
		return err
	}
	for _, text := range texts {
		if err := count(text); err != nil {
			return 0, err
		}
	}
	if len(structured) > 0 && string(structured) != "null" {
		if err := count(string(structured)); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// resultText returns what of a CallToolResult reaches the model as text,
// keys matched exactly: the text of each content item of type "text",
// and the structured content. caseless reports a key that differs from
// one of those only by case, which Go's decoder would take instead.
func resultText(result json.RawMessage) (texts []string, structured json.RawMessage, caseless bool, err error) {
	m, err := decodeObject(result)
	switch {
	case err != nil:
		return nil, nil, false, err
	case m == nil:
		return nil, nil, false, nil // null: no content
	}
	caseless = hasCaselessKey(m, "content", "structuredContent")
	// The values of m are valid JSON of m's own: split, not decoded again.
	if raw := nullIsAbsent(m["content"]); raw != nil {
		if raw[0] != '[' {
			return nil, nil, false, errors.New("content is not an array")
		}
		for i, raw := range elements(raw) {
			item, err := validObject(raw)
			if err != nil {
				return nil, nil, false, fmt.Errorf("content item %d: %w", i, err)
			}
			caseless = caseless || hasCaselessKey(item, "type", "text")
			typ, err := optionalString(item, "type")
			if err != nil {
				return nil, nil, false, fmt.Errorf("content item %d: type: %w", i, err)
			}
			text, err := optionalString(item, "text")
			if err != nil {
				return nil, nil, false, fmt.Errorf("content item %d: text: %w", i, err)
			}
			if typ == "text" {
				texts = append(texts, text)
			}
		}
	}
	return texts, m["structuredContent"], caseless, nil
}

// hasCaselessKey reports whether m has a key that differs from one of
// keys only by case.
func hasCaselessKey(m map[string]json.RawMessage, keys ...string) bool {
	for k := range m {
		if caselessTwin(k, keys...) {
			return true
		}
	}
	return false
}

// optionalString is m's string under exactly key, which may be absent or
// null.
func optionalString(m map[string]json.RawMessage, key string) (string, error) {
	raw, ok := m[key]
	if !ok {
		return "", nil
	}
	return stringValue(raw)
}
