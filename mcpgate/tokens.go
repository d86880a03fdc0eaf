package mcpgate

import (
	"encoding/json"
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
}

// toolResult is the part of an MCP CallToolResult that reaches the model
// as text.
type toolResult struct {
	Content []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	StructuredContent json.RawMessage `json:"structuredContent"`
}

// CountResult implements TokenCounter.
func (c *TiktokenCounter) CountResult(result json.RawMessage) (int64, error) {
	c.once.Do(func() {
		enc := c.Encoding
		if enc == "" {
			enc = tokenizer.O200kBase
		}
		c.codec, c.err = tokenizer.Get(enc)
	})
	if c.err != nil {
		return 0, fmt.Errorf("mcpgate: loading tokenizer: %w", c.err)
	}
	var r toolResult
	if err := json.Unmarshal(result, &r); err != nil {
		return 0, fmt.Errorf("mcpgate: tool result is not a CallToolResult: %w", err)
	}
	var total int64
	count := func(s string) error {
		if s == "" {
			return nil
		}
		n, err := c.codec.Count(s)
		total += int64(n)
		return err
	}
	for _, item := range r.Content {
		if item.Type == "text" {
			if err := count(item.Text); err != nil {
				return 0, err
			}
		}
	}
	if len(r.StructuredContent) > 0 && string(r.StructuredContent) != "null" {
		if err := count(string(r.StructuredContent)); err != nil {
			return 0, err
		}
	}
	return total, nil
}
