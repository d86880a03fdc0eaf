// Package audit keeps an append-only, tamper-evident log of governance
// decisions.
//
// Every Record is stored as one canonical byte encoding (see
// EncodeRecord). The records are the leaves of an RFC 6962 Merkle tree,
// and the log signs checkpoints of the tree with an Ed25519 key. Verify
// recomputes the tree from the stored bytes, checks it against every
// signed checkpoint, and names the first record that does not fit;
// inclusion and consistency proofs let an outsider check one record, or
// that the log only grew, with nothing but the verifier key. Records live
// in a Store: NewMemoryStore is the in-process one, and store/sqlite the
// durable one. docs/audit-format.md describes the format.
package audit

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Outcome is the result of the decision a Record describes.
type Outcome string

// Outcomes. A record that is not a decision (an assignment change, say)
// has the empty Outcome.
const (
	OutcomeAllowed Outcome = "allow"
	OutcomeDenied  Outcome = "deny"
)

// A Record is one entry of the audit log.
type Record struct {
	// Seq is the record's position in the log, counting from 0. The log
	// sets it; it is not part of the encoded bytes.
	Seq uint64
	// Time is when the log appended the record, in UTC. The log sets it.
	Time time.Time
	// Namespace separates the records of several applications sharing a
	// log. The log fills in its own when a record has none.
	Namespace string
	// Event names what happened, such as "tool.call" or "trust.assign".
	// It is required.
	Event string
	// Agent, Session, Tool and Scope identify the call, when there is one.
	Agent   string
	Session string
	Tool    string
	Scope   string
	// Outcome says whether the call was allowed or denied.
	Outcome Outcome
	// Reason explains the outcome.
	Reason string
	// RequiredLevel and AssignedLevel are the trust levels compared.
	RequiredLevel string
	AssignedLevel string
	// Tokens is the number of tokens the call used. It is never negative.
	Tokens int64
	// Attrs holds further string attributes. Keys must not be empty.
	Attrs map[string]string
}

// MaxRecordSize is the largest encoded record the log accepts, in bytes.
const MaxRecordSize = 64 << 10

// ErrInvalidRecord is returned, wrapped, for a record the log refuses to
// append.
var ErrInvalidRecord = errors.New("invalid audit record")

// Validate reports whether the fields a caller sets can be logged: an event
// is present, the outcome is known, tokens are not negative, every string
// is valid UTF-8 and no attribute key is empty. It does not check the size.
func (r *Record) Validate() error {
	if err := r.checkFields(); err != nil {
		return err
	}
	for _, f := range [...]struct{ name, v string }{
		{"namespace", r.Namespace}, {"event", r.Event}, {"agent", r.Agent},
		{"session", r.Session}, {"tool", r.Tool}, {"scope", r.Scope},
		{"reason", r.Reason}, {"required level", r.RequiredLevel},
		{"assigned level", r.AssignedLevel},
	} {
		if !utf8.ValidString(f.v) {
			return invalidUTF8(f.name)
		}
	}
	for k, v := range r.Attrs {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return invalidUTF8(fmt.Sprintf("attribute %q", k))
		}
	}
	return nil
}

func invalidUTF8(field string) error {
	return fmt.Errorf("audit: %w: %s is not valid UTF-8", ErrInvalidRecord, field)
}

// checkFields is Validate without the UTF-8 checks, which the encoder
// makes as it goes.
func (r *Record) checkFields() error {
	if r.Event == "" {
		return fmt.Errorf("audit: %w: empty event", ErrInvalidRecord)
	}
	switch r.Outcome {
	case "", OutcomeAllowed, OutcomeDenied:
	default:
		return fmt.Errorf("audit: %w: outcome %q is not %q or %q", ErrInvalidRecord, r.Outcome, OutcomeAllowed, OutcomeDenied)
	}
	if r.Tokens < 0 {
		return fmt.Errorf("audit: %w: negative tokens %d", ErrInvalidRecord, r.Tokens)
	}
	for k := range r.Attrs {
		if k == "" {
			return fmt.Errorf("audit: %w: attribute with an empty key", ErrInvalidRecord)
		}
	}
	return nil
}
