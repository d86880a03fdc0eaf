package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// A recordJSON is an audit record as the API shows it.
type recordJSON struct {
	Seq           uint64            `json:"seq"`
	Time          time.Time         `json:"time"`
	Namespace     string            `json:"namespace,omitempty"`
	Event         string            `json:"event"`
	Agent         string            `json:"agent,omitempty"`
	Session       string            `json:"session,omitempty"`
	Tool          string            `json:"tool,omitempty"`
	Scope         string            `json:"scope,omitempty"`
	Outcome       audit.Outcome     `json:"outcome,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	RequiredLevel string            `json:"required_level,omitempty"`
	AssignedLevel string            `json:"assigned_level,omitempty"`
	Tokens        int64             `json:"tokens,omitempty"`
	Attrs         map[string]string `json:"attrs,omitempty"`
}

func recordOf(r *audit.Record) recordJSON {
	return recordJSON{Seq: r.Seq, Time: r.Time.UTC(), Namespace: r.Namespace, Event: r.Event, Agent: r.Agent,
		Session: r.Session, Tool: r.Tool, Scope: r.Scope, Outcome: r.Outcome, Reason: r.Reason,
		RequiredLevel: r.RequiredLevel, AssignedLevel: r.AssignedLevel, Tokens: r.Tokens, Attrs: r.Attrs}
}

type eventRequest struct {
	Event   string            `json:"event"`
	Session string            `json:"session"`
	Tool    string            `json:"tool"`
	Outcome audit.Outcome     `json:"outcome"`
	Reason  string            `json:"reason"`
	Tokens  int64             `json:"tokens"`
	Attrs   map[string]string `json:"attrs"`
}

// checkAttrs refuses attributes a caller may not set, or too many.
func checkAttrs(attrs map[string]string) error {
	if len(attrs) > maxAttrs {
		return fmt.Errorf("at most %d attributes", maxAttrs)
	}
	n := 0
	for k, v := range attrs {
		n += len(k) + len(v)
		if audit.ReservedAttr(k) {
			return fmt.Errorf("the attribute %q is agentsec's to set", k)
		}
	}
	if n > maxAttrsBytes {
		return fmt.Errorf("attributes of %d bytes, more than %d", n, maxAttrsBytes)
	}
	return nil
}

type eventAnswer struct {
	DecisionID uint64     `json:"decision_id"`
	Record     recordJSON `json:"record"`
}

// Bounds on a caller's event, so that its record can always be written.
const (
	maxEventField = 256
	maxReason     = 4096
	maxAttrs      = 64
	maxAttrsBytes = 16 << 10
)

func (s *Server) logEvent(ctx context.Context, q *request) answer {
	var in eventRequest
	if err := decode(q.body, &in); err != nil {
		return invalid(err.Error())
	}
	rec := audit.Record{Event: in.Event, Tool: in.Tool, Outcome: in.Outcome, Reason: in.Reason, Tokens: in.Tokens}
	if err := checkEvent(&in); err != nil {
		return invalid(err.Error())
	}
	rec.Attrs = map[string]string{}
	for k, v := range in.Attrs {
		rec.Attrs[k] = v
	}
	// The server says who wrote it: the attributes a caller sends can't.
	if q.who.agent != "" {
		rec.Agent, rec.Attrs["source"] = q.who.agent, "client"
	} else {
		rec.Attrs["source"], rec.Attrs["operator"] = "operator", q.who.operator
	}
	if in.Session != "" {
		if err := checkSessionName(in.Session); err != nil {
			return invalid(err.Error())
		}
		rec.Session = in.Session
		if q.who.agent != "" {
			rec.Session = sessionKey(q.who.agent, in.Session)
		}
	}
	if err := rec.Validate(); err != nil {
		return invalid(strings.TrimPrefix(err.Error(), "audit: "))
	}
	logged, err := s.Stack.Audit.Log(ctx, rec)
	if errors.Is(err, audit.ErrInvalidRecord) {
		return invalid(strings.TrimPrefix(err.Error(), "audit: "))
	}
	if err != nil {
		return auditUnavailable(err)
	}
	return reply(http.StatusCreated, eventAnswer{DecisionID: logged.Seq, Record: recordOf(&logged)})
}

// checkEvent checks a caller's event before it becomes a record.
func checkEvent(in *eventRequest) error {
	switch {
	case in.Event == "":
		return errors.New("\"event\" is required")
	case len(in.Event) > maxEventField, len(in.Tool) > maxEventField:
		return fmt.Errorf("event and tool are limited to %d bytes", maxEventField)
	case len(in.Reason) > maxReason:
		return fmt.Errorf("reason is limited to %d bytes", maxReason)
	case in.Outcome != "" && in.Outcome != audit.OutcomeAllowed && in.Outcome != audit.OutcomeDenied:
		return fmt.Errorf("outcome must be %q or %q", audit.OutcomeAllowed, audit.OutcomeDenied)
	}
	if err := checkTokens("tokens", in.Tokens); err != nil {
		return err
	}
	if audit.ReservedEvent(in.Event) {
		return fmt.Errorf("the event %q is of a kind agentsec records itself; name yours otherwise", in.Event)
	}
	return checkAttrs(in.Attrs)
}

type queryAnswer struct {
	Records    []recordJSON `json:"records"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

// maxQueryLimit bounds a page of the API's queries.
const maxQueryLimit = 1000

func (s *Server) queryRecords(ctx context.Context, q *request) answer {
	v := q.r.URL.Query()
	for k := range v {
		switch k {
		case "agent", "session", "tool", "event", "outcome", "since", "until", "limit", "cursor":
		default:
			return invalid("unknown query parameter " + quote(k))
		}
	}
	f := audit.Filter{Agent: v.Get("agent"), Session: v.Get("session"), Tool: v.Get("tool"), Event: v.Get("event"),
		Outcome: audit.Outcome(v.Get("outcome")), Cursor: v.Get("cursor"), Namespace: ""}
	if q.who.agent != "" {
		// An agent reads its own records, and names its own sessions.
		if f.Agent != "" && f.Agent != q.who.agent {
			return forbidden("an agent reads only its own records")
		}
		f.Agent = q.who.agent
		if f.Session != "" {
			if err := checkSessionName(f.Session); err != nil {
				return invalid(err.Error())
			}
			f.Session = sessionKey(q.who.agent, f.Session)
		}
	}
	if f.Outcome != "" && f.Outcome != audit.OutcomeAllowed && f.Outcome != audit.OutcomeDenied {
		return invalid(fmt.Sprintf("outcome must be %q or %q", audit.OutcomeAllowed, audit.OutcomeDenied))
	}
	for _, t := range []struct {
		name string
		to   *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if raw := v.Get(t.name); raw != "" {
			tm, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				return invalid(t.name + " must be an RFC 3339 time, such as 2026-12-04T09:00:00Z")
			}
			*t.to = tm
		}
	}
	f.Limit = audit.DefaultLimit
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > maxQueryLimit {
			return invalid(fmt.Sprintf("limit must be an integer from 1 to %d", maxQueryLimit))
		}
		f.Limit = n
	}
	page, err := s.Stack.Audit.Query(ctx, f)
	if errors.Is(err, audit.ErrInvalidFilter) {
		return invalid(strings.TrimPrefix(err.Error(), "audit: "))
	}
	if err != nil {
		return auditUnreadable(err)
	}
	out := queryAnswer{Records: make([]recordJSON, len(page.Records)), NextCursor: page.Next}
	for i := range page.Records {
		out.Records[i] = recordOf(&page.Records[i])
	}
	return reply(http.StatusOK, out)
}

// storedRecord returns record seq's stored bytes and the record, if the
// caller may read it.
func (s *Server) storedRecord(ctx context.Context, q *request) ([]byte, audit.Record, answer, bool) {
	raw := q.r.PathValue("seq")
	seq, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return nil, audit.Record{}, invalid("the record's index must be a non-negative integer, not " + quote(raw)), false
	}
	var data []byte
	err = s.Stack.Audit.Store().Scan(ctx, seq, seq+1, func(e audit.Entry) error {
		data = bytes.Clone(e.Data)
		return nil
	})
	if err != nil {
		return nil, audit.Record{}, auditUnreadable(err), false
	}
	missing := notFound(fmt.Sprintf("no record %d that this caller may read", seq))
	if data == nil {
		return nil, audit.Record{}, missing, false
	}
	rec, err := audit.DecodeRecord(data)
	if err != nil {
		return nil, audit.Record{}, auditUnavailableBecause(fmt.Sprintf("record %d does not decode", seq), err), false
	}
	rec.Seq = seq
	if q.who.agent != "" && rec.Agent != q.who.agent {
		return nil, audit.Record{}, missing, false
	}
	return data, rec, answer{}, true
}

type recordAnswer struct {
	Record   recordJSON `json:"record"`
	LeafHash string     `json:"leaf_hash"`
}

// leafHash is the Merkle leaf hash of a record's stored bytes.
func leafHash(data []byte) string {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

func (s *Server) getRecord(ctx context.Context, q *request) answer {
	data, rec, a, ok := s.storedRecord(ctx, q)
	if !ok {
		return a
	}
	return reply(http.StatusOK, recordAnswer{Record: recordOf(&rec), LeafHash: leafHash(data)})
}

type proofAnswer struct {
	Seq        uint64     `json:"seq"`
	Record     recordJSON `json:"record"`
	LeafHash   string     `json:"leaf_hash"`
	Checkpoint string     `json:"checkpoint"`
	Proof      string     `json:"proof"`
}

func (s *Server) getRecordProof(ctx context.Context, q *request) answer {
	data, rec, a, ok := s.storedRecord(ctx, q)
	if !ok {
		return a
	}
	signed, err := s.checkpointWhere(ctx, func(size uint64) bool { return size > rec.Seq })
	if err != nil {
		return auditUnreadable(err)
	}
	proof, err := audit.ProveInclusion(ctx, s.Stack.Audit.Store(), rec.Seq, signed)
	if err != nil {
		return auditUnreadable(err)
	}
	text, err := proof.MarshalText()
	if err != nil {
		return auditUnreadable(err)
	}
	return reply(http.StatusOK, proofAnswer{Seq: rec.Seq, Record: recordOf(&rec), LeafHash: leafHash(data),
		Checkpoint: string(signed), Proof: string(text)})
}

type checkpointAnswer struct {
	Origin     string `json:"origin"`
	Size       uint64 `json:"size"`
	RootHash   string `json:"root_hash"`
	Checkpoint string `json:"checkpoint"`
}

func (s *Server) getCheckpoint(ctx context.Context, q *request) answer {
	signed, err := s.checkpointWhere(ctx, func(uint64) bool { return true })
	if err != nil {
		return auditUnreadable(err)
	}
	cp, err := audit.OpenCheckpoint(signed, s.Stack.Audit.Verifier())
	if err != nil {
		return auditUnavailableBecause("the latest checkpoint does not verify", err)
	}
	return reply(http.StatusOK, checkpointAnswer{Origin: cp.Origin, Size: cp.Size,
		RootHash: base64.StdEncoding.EncodeToString(cp.Root[:]), Checkpoint: string(signed)})
}

// minSigningGap is the least time between two checkpoints signed because
// a caller asked for one.
const minSigningGap = time.Second

// checkpointWhere returns the latest signed checkpoint if there is one
// and its size is good, or else one signed now. However many callers
// ask, the server signs for them at most once per minSigningGap — they
// wait, and most find the one signed for another covers them too — so
// that asking can't make the log sign and store a checkpoint per request.
// The signing is not cut short by a caller going away: a checkpoint
// half stored would mark the log failed for every agent.
func (s *Server) checkpointWhere(ctx context.Context, good func(size uint64) bool) ([]byte, error) {
	latest := func() ([]byte, bool, error) {
		size, signed, err := s.Stack.Audit.Store().LatestCheckpoint(ctx)
		return signed, err == nil && signed != nil && good(size), err
	}
	if signed, ok, err := latest(); err != nil || ok {
		return signed, err
	}
	s.signing.Lock()
	defer s.signing.Unlock()
	if signed, ok, err := latest(); err != nil || ok {
		return signed, err
	}
	if wait := time.Until(s.lastSigned.Add(minSigningGap)); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if signed, ok, err := latest(); err != nil || ok {
			return signed, err
		}
	}
	signed, err := s.Stack.Audit.Checkpoint(context.WithoutCancel(ctx))
	s.lastSigned = time.Now()
	return signed, err
}

//go:embed openapi.json
var openAPIDocument []byte

func (s *Server) openAPI(context.Context, *request) answer {
	return reply(http.StatusOK, rawJSON(openAPIDocument))
}
