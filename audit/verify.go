package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// Verifier checks the log's checkpoints. Without one, Verify can only
	// check that records and stored hashes agree, and fails if the store
	// holds checkpoints it cannot check.
	Verifier note.Verifier
	// Origin, if set, is the origin every checkpoint must name.
	Origin string
	// Trusted are signed checkpoints kept outside the log's store — the
	// external anchors. Each must verify and match the log, which catches
	// a log rewritten or truncated together with its stored checkpoints.
	Trusted [][]byte
	// TrustedNames, if set, names the trusted checkpoints in errors, one
	// name per checkpoint in Trusted (a file name, say); otherwise they
	// are "trusted 1", "trusted 2"….
	TrustedNames []string
	// Progress, if set, is called every ProgressEvery records with the
	// records checked so far and the total, and once at the end.
	Progress func(done, total uint64)
	// ProgressEvery is how many records pass between calls of Progress;
	// 0 means 65,536.
	ProgressEvery uint64
}

// VerifyResult describes a verified log.
type VerifyResult struct {
	// Records is how many records were checked; when Verify fails, how
	// many checked out before the first failure.
	Records uint64
	// Root is the hash of the tree of those records.
	Root Hash
	// Checkpoints is how many signed checkpoints matched, trusted ones
	// included.
	Checkpoints int
	// Latest is the checkpoint of the largest size that matched; its
	// Size is 0 if none did.
	Latest Checkpoint
}

// Uncovered returns how many of the newest records no checkpoint covers
// yet; they are checked for consistency but not against a signature.
func (r VerifyResult) Uncovered() uint64 { return r.Records - r.Latest.Size }

// Unvouched reports whether the log has records and no signed checkpoint
// covers any of them — none at all, or only one of the empty log, whose
// root is every log's — so that nothing ties them to the key: whoever can
// write the store could have written them. A verifier should fail then.
func (r VerifyResult) Unvouched() bool { return r.Records > 0 && r.Latest.Size == 0 }

// A VerifyError names the first record that failed verification.
type VerifyError struct {
	Seq    uint64
	Reason string
}

// Error names the record and what is wrong with it.
func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: record %d: %s", e.Seq, e.Reason)
}

// ErrVerify is matched by every *VerifyError and *CheckpointError.
var ErrVerify = errors.New("audit log verification failed")

// Is reports whether target is ErrVerify.
func (e *VerifyError) Is(target error) bool { return target == ErrVerify }

// A CheckpointError is a signed checkpoint that is invalid or that the log
// does not match.
type CheckpointError struct {
	Size   uint64
	Source string // "stored" or the trusted checkpoint's position, "trusted 1"…
	Reason string
}

// Error names the checkpoint and what is wrong with it.
func (e *CheckpointError) Error() string {
	return fmt.Sprintf("audit: %s checkpoint of size %d: %s", e.Source, e.Size, e.Reason)
}

// Is reports whether target is ErrVerify.
func (e *CheckpointError) Is(target error) bool { return target == ErrVerify }

type knownCheckpoint struct {
	Checkpoint
	source string
}

// Verify checks a whole log from its stored bytes: every record must be
// canonical and match its stored leaf hash, every stored tree hash must
// match the tree recomputed from the records, every signed checkpoint —
// stored or trusted — must verify with opts.Verifier and commit to the
// tree the records make at its size, and no checkpoint may cover more
// records than the store holds. The first failure is returned as a
// *VerifyError naming the record, or a *CheckpointError naming the
// checkpoint; both match ErrVerify.
//
// A record edited, removed, inserted or swapped without its hashes
// changes its leaf hash and is named exactly. If the hashes were rewritten
// to match, the first checkpoint signed after the change no longer
// matches, and the error names the first record after the last checkpoint
// that still does.
func Verify(ctx context.Context, store Store, opts VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	size, err := store.Size(ctx)
	if err != nil {
		return res, fmt.Errorf("audit: reading log size: %w", err)
	}
	cps, err := collectCheckpoints(ctx, store, opts)
	if err != nil {
		return res, err
	}

	every := cmp.Or(opts.ProgressEvery, 65536)
	var (
		front   frontier
		next    uint64
		scratch [64]Hash
		good    uint64 // size of the last checkpoint that matched
	)
	// checkAt compares the tree of the first n records with the
	// checkpoints of size n, which are next in cps.
	checkAt := func(n uint64) error {
		prev := good // two checkpoints of one size must not vouch for each other
		for len(cps) > 0 && cps[0].Size == n {
			cp := cps[0]
			cps = cps[1:]
			if front.root(n) != cp.Root {
				return &VerifyError{Seq: prev, Reason: fmt.Sprintf(
					"the first %d records do not match the %s checkpoint signed at that size, and the first %d do: a record from %d to %d was changed and its hashes rewritten",
					n, cp.source, prev, prev, n-1)}
			}
			good = n
			res.Checkpoints++
			res.Latest = cp.Checkpoint
		}
		return nil
	}
	if err := checkAt(0); err != nil {
		return res, err
	}
	err = store.Scan(ctx, 0, size, func(e Entry) error {
		if e.Seq != next {
			return &VerifyError{Seq: next, Reason: fmt.Sprintf("missing: the store skips from record %d to %d", next, e.Seq)}
		}
		want := front.appendLeaf(scratch[:0], e.Seq, tlog.RecordHash(e.Data))
		if len(e.Hashes) > 0 && e.Hashes[0] != want[0] {
			return &VerifyError{Seq: e.Seq, Reason: "the record's bytes do not match its stored leaf hash: it was edited, moved, inserted or removed"}
		}
		if _, err := DecodeRecord(e.Data); err != nil {
			return &VerifyError{Seq: e.Seq, Reason: withoutPrefix(err)}
		}
		if !slices.Equal(e.Hashes, want) {
			return &VerifyError{Seq: e.Seq, Reason: "the stored tree hashes of this record do not match the records before it"}
		}
		next++
		if err := checkAt(next); err != nil {
			return err
		}
		if opts.Progress != nil && next%every == 0 {
			opts.Progress(next, size)
		}
		return nil
	})
	// On failure, Records says how many records checked out before it.
	res.Records = next
	if err != nil {
		if errors.Is(err, ErrVerify) {
			return res, err
		}
		return res, fmt.Errorf("audit: reading record %d: %w", next, err)
	}
	if next != size {
		return res, &VerifyError{Seq: next, Reason: fmt.Sprintf("missing: the store holds %d records but returned %d", size, next)}
	}
	if len(cps) > 0 {
		cp := cps[len(cps)-1]
		return res, &VerifyError{Seq: size, Reason: fmt.Sprintf(
			"missing: the log ends after %d records, but the %s checkpoint covers %d: records %d to %d were removed",
			size, cp.source, cp.Size, size, cp.Size-1)}
	}
	if opts.Progress != nil {
		opts.Progress(size, size)
	}
	res.Records, res.Root = size, front.root(size)
	return res, nil
}

// collectCheckpoints opens every stored and trusted checkpoint and returns
// them by size.
func collectCheckpoints(ctx context.Context, store Store, opts VerifyOptions) ([]knownCheckpoint, error) {
	var cps []knownCheckpoint
	origin := opts.Origin
	add := func(signed []byte, source string, storedSize uint64, stored bool) error {
		if !stored {
			// Name a trusted checkpoint by the size it claims, even if
			// it turns out not to verify.
			if c, err := readCheckpoint(signed); err == nil {
				storedSize = c.Size
			}
		}
		if opts.Verifier == nil {
			return &CheckpointError{Size: storedSize, Source: source,
				Reason: "cannot be checked without the log's verifier key"}
		}
		cp, err := OpenCheckpoint(signed, opts.Verifier)
		if err != nil {
			return &CheckpointError{Size: storedSize, Source: source, Reason: withoutPrefix(err)}
		}
		if stored && cp.Size != storedSize {
			return &CheckpointError{Size: storedSize, Source: source, Reason: fmt.Sprintf("is stored as size %d but says %d", storedSize, cp.Size)}
		}
		if origin == "" {
			origin = cp.Origin
		}
		if cp.Origin != origin {
			return &CheckpointError{Size: cp.Size, Source: source, Reason: fmt.Sprintf("names origin %q, not %q", cp.Origin, origin)}
		}
		cps = append(cps, knownCheckpoint{cp, source})
		return nil
	}
	err := store.Checkpoints(ctx, func(size uint64, signed []byte) error {
		return add(signed, "stored", size, true)
	})
	if err != nil {
		if errors.Is(err, ErrVerify) {
			return nil, err
		}
		return nil, fmt.Errorf("audit: reading checkpoints: %w", err)
	}
	for i, signed := range opts.Trusted {
		name := fmt.Sprintf("trusted %d", i+1)
		if i < len(opts.TrustedNames) {
			name = "trusted " + opts.TrustedNames[i]
		}
		if err := add(signed, name, 0, false); err != nil {
			return nil, err
		}
	}
	slices.SortStableFunc(cps, func(a, b knownCheckpoint) int { return cmp.Compare(a.Size, b.Size) })
	return cps, nil
}

// withoutPrefix returns err's message without the package prefix, for
// errors whose context already names the package.
func withoutPrefix(err error) string { return strings.TrimPrefix(err.Error(), "audit: ") }
