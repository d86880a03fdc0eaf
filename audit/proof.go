package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// An InclusionProof shows that a record is in the tree a signed checkpoint
// commits to. CheckInclusion verifies it with only the log's verifier key.
type InclusionProof struct {
	Seq        uint64
	Record     []byte // the record's canonical bytes
	Hashes     tlog.RecordProof
	Checkpoint []byte // signed
}

// A ConsistencyProof shows that the tree of a newer signed checkpoint
// extends the tree of an older one: the log only grew in between.
// CheckConsistency verifies it with only the log's verifier key.
type ConsistencyProof struct {
	Hashes tlog.TreeProof
	Old    []byte // signed checkpoint
	New    []byte // signed checkpoint
}

// ErrProof is returned, wrapped, for a malformed or failing proof.
var ErrProof = errors.New("invalid proof")

// ProveInclusion proves record seq is in the tree of the signed checkpoint,
// which must cover it. The checkpoint is not verified here; the checker
// does that.
func ProveInclusion(ctx context.Context, store Store, seq uint64, checkpoint []byte) (*InclusionProof, error) {
	cp, err := readCheckpoint(checkpoint)
	if err != nil {
		return nil, err
	}
	if seq >= cp.Size {
		return nil, fmt.Errorf("audit: record %d is not covered by the checkpoint of size %d", seq, cp.Size)
	}
	var record []byte
	err = store.Scan(ctx, seq, seq+1, func(e Entry) error {
		record = bytes.Clone(e.Data)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: reading record %d: %w", seq, err)
	}
	if record == nil {
		return nil, fmt.Errorf("audit: the log has no record %d", seq)
	}
	hashes, err := tlog.ProveRecord(int64(cp.Size), int64(seq), storeHashReader{ctx, store})
	if err != nil {
		return nil, fmt.Errorf("audit: proving record %d: %w", seq, err)
	}
	return &InclusionProof{Seq: seq, Record: record, Hashes: hashes, Checkpoint: bytes.Clone(checkpoint)}, nil
}

// ProveConsistency proves the tree of the signed checkpoint newer extends
// the tree of the signed checkpoint older.
func ProveConsistency(ctx context.Context, store Store, older, newer []byte) (*ConsistencyProof, error) {
	o, err := readCheckpoint(older)
	if err != nil {
		return nil, err
	}
	n, err := readCheckpoint(newer)
	if err != nil {
		return nil, err
	}
	if o.Size > n.Size {
		return nil, fmt.Errorf("audit: the older checkpoint (size %d) is larger than the newer (size %d)", o.Size, n.Size)
	}
	hashes, err := tlog.ProveTree(int64(n.Size), int64(o.Size), storeHashReader{ctx, store})
	if err != nil {
		return nil, fmt.Errorf("audit: proving consistency of sizes %d and %d: %w", o.Size, n.Size, err)
	}
	return &ConsistencyProof{Hashes: hashes, Old: bytes.Clone(older), New: bytes.Clone(newer)}, nil
}

// readCheckpoint parses a signed checkpoint without checking its
// signature, for provers, who need not hold the verifier key.
func readCheckpoint(signed []byte) (Checkpoint, error) {
	_, err := note.Open(signed, note.VerifierList())
	var unverified *note.UnverifiedNoteError
	if !errors.As(err, &unverified) {
		return Checkpoint{}, fmt.Errorf("audit: %w: not a signed note", ErrCheckpoint)
	}
	return ParseCheckpoint([]byte(unverified.Note.Text))
}

// CheckInclusion verifies p with the log's verifier key and returns the
// record it proves, decoded, with its Seq, and the checkpoint it is
// proved against.
func CheckInclusion(p *InclusionProof, verifier note.Verifier) (Record, Checkpoint, error) {
	cp, err := OpenCheckpoint(p.Checkpoint, verifier)
	if err != nil {
		return Record{}, Checkpoint{}, err
	}
	rec, err := DecodeRecord(p.Record)
	if err != nil {
		return Record{}, Checkpoint{}, fmt.Errorf("audit: %w: the proved record: %w", ErrProof, err)
	}
	if p.Seq >= cp.Size {
		return Record{}, Checkpoint{}, fmt.Errorf("audit: %w: record %d is beyond the checkpoint's %d records", ErrProof, p.Seq, cp.Size)
	}
	err = tlog.CheckRecord(p.Hashes, int64(cp.Size), cp.Root, int64(p.Seq), tlog.RecordHash(p.Record))
	if err != nil {
		return Record{}, Checkpoint{}, fmt.Errorf("audit: %w: record %d is not in the tree of the checkpoint of size %d", ErrProof, p.Seq, cp.Size)
	}
	rec.Seq = p.Seq
	return rec, cp, nil
}

// CheckConsistency verifies p with the log's verifier key and returns the
// two checkpoints it relates.
func CheckConsistency(p *ConsistencyProof, verifier note.Verifier) (older, newer Checkpoint, err error) {
	o, err := OpenCheckpoint(p.Old, verifier)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, fmt.Errorf("audit: older checkpoint: %s: %w", withoutPrefix(err), ErrProof)
	}
	n, err := OpenCheckpoint(p.New, verifier)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, fmt.Errorf("audit: newer checkpoint: %s: %w", withoutPrefix(err), ErrProof)
	}
	switch {
	case o.Origin != n.Origin:
		return o, n, fmt.Errorf("audit: %w: the checkpoints name different logs, %q and %q", ErrProof, o.Origin, n.Origin)
	case o.Size > n.Size:
		return o, n, fmt.Errorf("audit: %w: the older checkpoint (size %d) is larger than the newer (size %d)", ErrProof, o.Size, n.Size)
	}
	if err := tlog.CheckTree(p.Hashes, int64(n.Size), n.Root, int64(o.Size), o.Root); err != nil {
		return o, n, fmt.Errorf("audit: %w: the tree of size %d does not extend the tree of size %d: the log was rewritten", ErrProof, n.Size, o.Size)
	}
	return o, n, nil
}

// Proofs are written as text:
//
//	agentsec inclusion proof v1
//	index <seq>
//	record <base64 of the record's canonical bytes>
//	hash <base64>            (one line per proof hash)
//	checkpoint <length>
//	<the signed checkpoint, length bytes>
//
//	agentsec consistency proof v1
//	hash <base64>            (one line per proof hash)
//	checkpoint <length>
//	<the older signed checkpoint>
//	checkpoint <length>
//	<the newer signed checkpoint>
const (
	inclusionHeader   = "agentsec inclusion proof v1"
	consistencyHeader = "agentsec consistency proof v1"
	maxProofSize      = 256 << 10
	maxProofHashes    = 128
)

// MarshalText encodes the proof in its text form.
func (p *InclusionProof) MarshalText() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nindex %d\nrecord %s\n", inclusionHeader, p.Seq, base64.StdEncoding.EncodeToString(p.Record))
	writeHashes(&b, p.Hashes)
	writeCheckpoint(&b, p.Checkpoint)
	return b.Bytes(), nil
}

// MarshalText encodes the proof in its text form.
func (p *ConsistencyProof) MarshalText() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n", consistencyHeader)
	writeHashes(&b, p.Hashes)
	writeCheckpoint(&b, p.Old)
	writeCheckpoint(&b, p.New)
	return b.Bytes(), nil
}

func writeHashes(b *bytes.Buffer, hashes []tlog.Hash) {
	for _, h := range hashes {
		fmt.Fprintf(b, "hash %s\n", base64.StdEncoding.EncodeToString(h[:]))
	}
}

func writeCheckpoint(b *bytes.Buffer, signed []byte) {
	fmt.Fprintf(b, "checkpoint %d\n", len(signed))
	b.Write(signed)
}

// UnmarshalText parses the text form of an inclusion proof.
func (p *InclusionProof) UnmarshalText(text []byte) error {
	r, err := newProofReader(text, inclusionHeader)
	if err != nil {
		return err
	}
	var q InclusionProof
	if q.Seq, err = r.uintField("index"); err != nil {
		return err
	}
	if q.Record, err = r.base64Field("record", MaxRecordSize); err != nil {
		return err
	}
	hashes, err := r.hashes()
	if err != nil {
		return err
	}
	q.Hashes = hashes
	if q.Checkpoint, err = r.checkpoint(); err != nil {
		return err
	}
	if err := r.end(); err != nil {
		return err
	}
	*p = q
	return nil
}

// UnmarshalText parses the text form of a consistency proof.
func (p *ConsistencyProof) UnmarshalText(text []byte) error {
	r, err := newProofReader(text, consistencyHeader)
	if err != nil {
		return err
	}
	var q ConsistencyProof
	hashes, err := r.hashes()
	if err != nil {
		return err
	}
	q.Hashes = hashes
	if q.Old, err = r.checkpoint(); err != nil {
		return err
	}
	if q.New, err = r.checkpoint(); err != nil {
		return err
	}
	if err := r.end(); err != nil {
		return err
	}
	*p = q
	return nil
}

// proofReader reads a proof's lines.
type proofReader struct {
	rest []byte
	line int
}

func newProofReader(text []byte, header string) (*proofReader, error) {
	if len(text) > maxProofSize {
		return nil, fmt.Errorf("audit: %w: %d bytes, more than %d", ErrProof, len(text), maxProofSize)
	}
	r := &proofReader{rest: text}
	got, err := r.next()
	if err != nil {
		return nil, err
	}
	if got != header {
		return nil, fmt.Errorf("audit: %w: first line %q, want %q", ErrProof, truncateForError(got), header)
	}
	return r, nil
}

func (r *proofReader) errorf(format string, args ...any) error {
	return fmt.Errorf("audit: %w: line %d: %s", ErrProof, r.line, fmt.Sprintf(format, args...))
}

// next returns the next line without its newline.
func (r *proofReader) next() (string, error) {
	r.line++
	i := bytes.IndexByte(r.rest, '\n')
	if i < 0 {
		return "", r.errorf("unexpected end of proof")
	}
	line := string(r.rest[:i])
	r.rest = r.rest[i+1:]
	return line, nil
}

// peek reports whether the next line starts with prefix.
func (r *proofReader) peek(prefix string) bool { return bytes.HasPrefix(r.rest, []byte(prefix)) }

func (r *proofReader) field(name string) (string, error) {
	line, err := r.next()
	if err != nil {
		return "", err
	}
	value, ok := strings.CutPrefix(line, name+" ")
	if !ok {
		return "", r.errorf("want %q, got %q", name, truncateForError(line))
	}
	return value, nil
}

func (r *proofReader) uintField(name string) (uint64, error) {
	v, err := r.field(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil || strconv.FormatUint(n, 10) != v {
		return 0, r.errorf("%s %q is not a decimal number", name, truncateForError(v))
	}
	return n, nil
}

func (r *proofReader) base64Field(name string, maxLen int) ([]byte, error) {
	v, err := r.field(name)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.Strict().DecodeString(v)
	if err != nil || len(b) > maxLen {
		return nil, r.errorf("%s is not base64 of at most %d bytes", name, maxLen)
	}
	return b, nil
}

func (r *proofReader) hashes() ([]tlog.Hash, error) {
	var hashes []tlog.Hash
	for r.peek("hash ") {
		if len(hashes) == maxProofHashes {
			return nil, r.errorf("more than %d hashes", maxProofHashes)
		}
		b, err := r.base64Field("hash", 32)
		if err != nil {
			return nil, err
		}
		if len(b) != 32 {
			return nil, r.errorf("hash is %d bytes, want 32", len(b))
		}
		hashes = append(hashes, tlog.Hash(b))
	}
	return hashes, nil
}

func (r *proofReader) checkpoint() ([]byte, error) {
	n, err := r.uintField("checkpoint")
	if err != nil {
		return nil, err
	}
	if n > maxCheckpointSize || n > uint64(len(r.rest)) {
		return nil, r.errorf("checkpoint of %d bytes runs past the proof", n)
	}
	cp := bytes.Clone(r.rest[:n])
	r.rest = r.rest[n:]
	r.line += bytes.Count(cp, []byte("\n"))
	return cp, nil
}

func (r *proofReader) end() error {
	if len(r.rest) > 0 {
		return r.errorf("unexpected data after the proof")
	}
	return nil
}

// truncateForError shortens s for quoting in an error message.
func truncateForError(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
