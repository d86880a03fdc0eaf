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
//
// Every content item a client hands the model costs: a text's tokens; an
// embedded resource's text, counted the same; base64 data — an image's,
// an audio clip's, a resource's blob — a token for every 4 characters
// (mediaTokens); and an item of a type MCP may add later, its whole JSON,
// which fails safe. An item with no type is nothing a client shows.
func (c *TiktokenCounter) CountResult(result json.RawMessage) (int64, error) {
	if err := c.load(); err != nil {
		return 0, err
	}
	rc, err := resultText(result)
	if err != nil {
		return 0, fmt.Errorf("mcpgate: tool result is not a CallToolResult: %w", err)
	}
	total, err := c.count(rc.texts, rc.structured)
	total += rc.media
	if err != nil || !rc.caseless {
		return total, err
	}
	asGo, ok := readAsGo(result)
	if !ok {
		return total, nil // Go's clients can't read it: they see nothing
	}
	n, err := c.count(asGo.texts, asGo.structured)
	return max(total, n+asGo.media), err
}

// mediaCharsPerToken is what base64 data — an image's, an audio clip's, a
// resource's blob — costs: a token for every 4 characters, about what a
// tokenizer would count for it as text and more than models charge for
// media, counted without the tokenizer.
const mediaCharsPerToken = 4

// mediaTokens is what base64 data costs.
func mediaTokens(data string) int64 {
	return int64((len(data) + mediaCharsPerToken - 1) / mediaCharsPerToken)
}

// A contentItem is what of a content item reaches the model, as one
// reading (exact keys, or Go's) takes it.
type contentItem struct {
	Type     string `json:"type"`
	Text     string `json:"text"`
	Data     string `json:"data"`
	Resource *struct {
		Text string `json:"text"`
		Blob string `json:"blob"`
	} `json:"resource"`
}

// add adds what item costs to rc: raw is the item's JSON, counted whole
// for a type MCP may add later.
func (rc *resultContent) add(item contentItem, raw json.RawMessage) {
	switch item.Type {
	case "":
		// No type: nothing a client shows.
	case "text":
		rc.texts = append(rc.texts, item.Text)
	case "image", "audio":
		rc.media += mediaTokens(item.Data)
	case "resource":
		if item.Resource != nil {
			rc.texts = append(rc.texts, item.Resource.Text)
			rc.media += mediaTokens(item.Resource.Blob)
		}
	default:
		rc.texts = append(rc.texts, string(raw))
	}
}

// readAsGo reads a result as Go's decoder does, keys matched without
// regard to case; false if Go's clients can't read it.
func readAsGo(result json.RawMessage) (resultContent, bool) {
	var r struct {
		Content           []json.RawMessage `json:"content"`
		StructuredContent json.RawMessage   `json:"structuredContent"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return resultContent{}, false
	}
	rc := resultContent{structured: r.StructuredContent}
	for _, raw := range r.Content {
		var item contentItem
		if string(raw) != "null" {
			if err := json.Unmarshal(raw, &item); err != nil {
				return resultContent{}, false
			}
		}
		rc.add(item, raw)
	}
	return rc, true
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

// resultContent is what of a CallToolResult reaches the model.
type resultContent struct {
	// texts are the texts to count (contentItem).
	texts []string
	// media is the tokens of the content's base64 data.
	media int64
	// structured is the structured content.
	structured json.RawMessage
	// caseless reports a key that differs from one read only by case,
	// which Go's decoder would take instead.
	caseless bool
}

// resultText reads what of a CallToolResult reaches the model, keys
// matched exactly.
func resultText(result json.RawMessage) (rc resultContent, err error) {
	m, err := decodeObject(result)
	switch {
	case err != nil:
		return rc, err
	case m == nil:
		return rc, nil // null: no content
	}
	rc.caseless = hasCaselessKey(m, "content", "structuredContent")
	rc.structured = m["structuredContent"]
	// The values of m are valid JSON of m's own: split, not decoded again.
	raw := nullIsAbsent(m["content"])
	if raw == nil {
		return rc, nil
	}
	if raw[0] != '[' {
		return resultContent{}, errors.New("content is not an array")
	}
	items := elements(raw)
	rc.texts = make([]string, 0, len(items))
	for i, raw := range items {
		item, err := validObject(raw)
		if err != nil {
			return resultContent{}, fmt.Errorf("content item %d: %w", i, err)
		}
		var it contentItem
		if it.Type, err = optionalString(item, "type"); err != nil {
			return resultContent{}, fmt.Errorf("content item %d: type: %w", i, err)
		}
		rc.caseless = rc.caseless || hasCaselessKey(item, "type", "text", "data", "resource")
		switch it.Type {
		case "text":
			if it.Text, err = optionalString(item, "text"); err != nil {
				return resultContent{}, fmt.Errorf("content item %d: text: %w", i, err)
			}
		case "image", "audio":
			if it.Data, err = optionalString(item, "data"); err != nil {
				return resultContent{}, fmt.Errorf("content item %d: data: %w", i, err)
			}
		case "resource":
			res, err := validObject(nullIsAbsent(item["resource"]))
			if err != nil || res == nil {
				return resultContent{}, fmt.Errorf("content item %d: resource is not an object", i)
			}
			rc.caseless = rc.caseless || hasCaselessKey(res, "text", "blob")
			it.Resource = &struct {
				Text string `json:"text"`
				Blob string `json:"blob"`
			}{}
			if it.Resource.Text, err = optionalString(res, "text"); err != nil {
				return resultContent{}, fmt.Errorf("content item %d: resource text: %w", i, err)
			}
			if it.Resource.Blob, err = optionalString(res, "blob"); err != nil {
				return resultContent{}, fmt.Errorf("content item %d: resource blob: %w", i, err)
			}
		}
		rc.add(it, raw)
	}
	return rc, nil
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
