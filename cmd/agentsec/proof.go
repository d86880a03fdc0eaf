package main

import (
	"bytes"
	"context"
	"encoding"
	"errors"
	"flag"
	"fmt"
	"strconv"

	"github.com/agentsec/agentsec/audit"
)

func (m *Main) runAuditCheckpoint(ctx context.Context, args []string) error {
	fs := newFlagSet("audit checkpoint", "-db FILE [-o FILE]",
		`Checkpoint prints the latest signed checkpoint stored in the log. Keep it
away from the log, and later pass it to 'agentsec audit verify -trusted' or
'agentsec audit prove -old': it catches a log rewritten or truncated
together with its stored checkpoints.
`)
	db := fs.String("db", "", "the audit log's SQLite database `file`, or its PostgreSQL URL")
	out := fs.String("o", "", "write the checkpoint to this `file` instead of stdout")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	store, err := openStore(ctx, "audit checkpoint", *db)
	if err != nil {
		return err
	}
	defer store.Close()
	signed, cp, err := latestCheckpoint(ctx, store)
	if err != nil {
		return err
	}
	o, err := m.createOutput(*out, *db)
	if err != nil {
		return err
	}
	defer o.discard()
	if _, err := o.Write(signed); err != nil {
		return err
	}
	if err := o.commit(); err != nil {
		return err
	}
	if *out != "" && *out != "-" {
		fmt.Fprintf(m.Stdout, "wrote the checkpoint of the log %q at %s to %s\n", cp.Origin, plural(cp.Size, "record"), *out)
	}
	return nil
}

// latestCheckpoint returns the store's latest signed checkpoint, parsed
// but not verified.
func latestCheckpoint(ctx context.Context, store audit.Store) ([]byte, audit.Checkpoint, error) {
	size, signed, err := store.LatestCheckpoint(ctx)
	if err != nil {
		return nil, audit.Checkpoint{}, err
	}
	if signed == nil {
		return nil, audit.Checkpoint{}, errors.New("the log has no signed checkpoint yet; " +
			"the log signs one every so many records, every few seconds while records arrive, and when it closes")
	}
	cp, err := parseSignedCheckpoint(signed)
	if err != nil {
		return nil, audit.Checkpoint{}, fmt.Errorf("the latest stored checkpoint (size %d): %w; run agentsec audit verify", size, err)
	}
	return signed, cp, nil
}

func (m *Main) runAuditProve(ctx context.Context, args []string) error {
	fs := newFlagSet("audit prove", "-db FILE -record N [-checkpoint FILE]\n       agentsec audit prove -db FILE -old FILE [-new FILE]",
		`Prove prints a proof in agentsec's text form, which 'agentsec audit
check-proof' checks with only the verifier key.

With -record, it proves that record N is in the tree of a signed checkpoint:
the latest stored one, or the one in the -checkpoint file.

With -old, it proves that the log at a newer checkpoint (the -new file, or
the latest stored one) extends the log at the older one: records were only
appended in between.
`)
	db := fs.String("db", "", "the audit log's SQLite database `file`, or its PostgreSQL URL")
	record := int64(-1)
	fs.Func("record", "prove that the record with this `index` is in the log", func(s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		switch {
		case err != nil:
			return errors.New("want a record index, a whole number from 0")
		case n < 0:
			return errors.New("records are numbered from 0")
		}
		record = n
		return nil
	})
	cpFile := fs.String("checkpoint", "", "with -record, prove against the signed checkpoint in this `file`")
	oldFile := fs.String("old", "", "prove the log extends the older signed checkpoint in this `file`")
	newFile := fs.String("new", "", "with -old, prove up to the newer signed checkpoint in this `file`")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["record"] && set["old"]:
		return errors.New("audit prove: use -record for an inclusion proof or -old for a consistency proof, not both")
	case set["record"] && set["new"]:
		return errors.New("audit prove: -new goes with -old; prove a record against a checkpoint file with -checkpoint")
	case set["old"] && set["checkpoint"]:
		return errors.New("audit prove: -checkpoint goes with -record; name the newer checkpoint of a consistency proof with -new")
	case !set["record"] && *oldFile == "":
		return errors.New("audit prove needs -record N for an inclusion proof or -old CHECKPOINT_FILE for a consistency proof")
	}
	var proof encoding.TextMarshaler
	var err error
	if set["record"] {
		proof, err = proveInclusion(ctx, *db, uint64(record), *cpFile)
	} else {
		proof, err = proveConsistency(ctx, *db, *oldFile, *newFile)
	}
	if err != nil {
		return err
	}
	text, err := proof.MarshalText()
	if err != nil {
		return err
	}
	_, err = m.Stdout.Write(text)
	return err
}

func proveInclusion(ctx context.Context, db string, seq uint64, cpFile string) (*audit.InclusionProof, error) {
	var signed []byte
	var cp audit.Checkpoint
	var err error
	name := "the latest stored checkpoint"
	if cpFile != "" {
		if signed, cp, err = readCheckpointFile("checkpoint", cpFile); err != nil {
			return nil, err
		}
		name = "checkpoint " + cpFile
	}
	store, err := openStore(ctx, "audit prove", db)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if signed == nil {
		if signed, cp, err = latestCheckpoint(ctx, store); err != nil {
			return nil, err
		}
	}
	size, err := store.Size(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case seq >= size:
		return nil, fmt.Errorf("the log has no record %d; it holds %s, numbered from 0", seq, plural(size, "record"))
	case seq >= cp.Size:
		return nil, fmt.Errorf("record %d is newer than %s, which covers %s; prove it once a checkpoint covers it",
			seq, name, plural(cp.Size, "record"))
	}
	if err := matchCheckpoint(ctx, store, name, cp); err != nil {
		return nil, err
	}
	return audit.ProveInclusion(ctx, store, seq, signed)
}

func proveConsistency(ctx context.Context, db, oldFile, newFile string) (*audit.ConsistencyProof, error) {
	older, o, err := readCheckpointFile("checkpoint", oldFile)
	if err != nil {
		return nil, err
	}
	var newer []byte
	var n audit.Checkpoint
	newName := "the latest stored checkpoint"
	if newFile != "" {
		if newer, n, err = readCheckpointFile("checkpoint", newFile); err != nil {
			return nil, err
		}
		newName = "checkpoint " + newFile
	}
	store, err := openStore(ctx, "audit prove", db)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if newer == nil {
		if newer, n, err = latestCheckpoint(ctx, store); err != nil {
			return nil, err
		}
	}
	switch {
	case o.Origin != n.Origin:
		return nil, fmt.Errorf("checkpoint %s is of the log %q, but %s is of the log %q", oldFile, o.Origin, newName, n.Origin)
	case o.Size > n.Size:
		return nil, fmt.Errorf("checkpoint %s covers %s, more than %s, which covers %s; pass the older checkpoint as -old",
			oldFile, plural(o.Size, "record"), newName, plural(n.Size, "record"))
	}
	if err := matchCheckpoint(ctx, store, newName, n); err != nil {
		return nil, err
	}
	if err := matchCheckpoint(ctx, store, "checkpoint "+oldFile, o); err != nil {
		return nil, err
	}
	return audit.ProveConsistency(ctx, store, older, newer)
}

// maxProofFile bounds the proof files check-proof reads.
const maxProofFile = 1 << 20

func (m *Main) runAuditCheckProof(_ context.Context, args []string) error {
	fs := newFlagSet("audit check-proof", "-pubkey FILE PROOF_FILE",
		`Check-proof checks a proof made by 'agentsec audit prove', offline, with only
the log's verifier key, and prints what it proves. It reads the proof from
standard input if PROOF_FILE is -. It exits 0 only if the proof holds.
`)
	pubkey := fs.String("pubkey", "", "the log's verifier key `file` (NAME.pub from agentsec keygen)")
	if err := m.parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("audit check-proof needs a proof file, or - for standard input")
	}
	verifier, err := readVerifier("audit check-proof", *pubkey)
	if err != nil {
		return err
	}
	var text []byte
	if path := fs.Arg(0); path == "-" {
		text, err = readMax(m.Stdin, "the proof on standard input", maxProofFile)
	} else {
		text, err = readFileMax(path, maxProofFile)
	}
	if err != nil {
		return fmt.Errorf("reading proof: %w", err)
	}
	first, _, _ := bytes.Cut(text, []byte("\n"))
	switch {
	case bytes.HasPrefix(first, []byte("agentsec inclusion proof ")):
		var p audit.InclusionProof
		if err := p.UnmarshalText(text); err != nil {
			return err
		}
		rec, cp, err := audit.CheckInclusion(&p, verifier)
		if err != nil {
			return fmt.Errorf("%w%s", err, keyHint(err, *pubkey))
		}
		fmt.Fprintf(m.Stdout, "record %d is in the log %q of %s: %s\n", rec.Seq, cp.Origin, plural(cp.Size, "record"), oneLine(string(p.Record)))
	case bytes.HasPrefix(first, []byte("agentsec consistency proof ")):
		var p audit.ConsistencyProof
		if err := p.UnmarshalText(text); err != nil {
			return err
		}
		o, n, err := audit.CheckConsistency(&p, verifier)
		if err != nil {
			return fmt.Errorf("%w%s", err, keyHint(err, *pubkey))
		}
		fmt.Fprintf(m.Stdout, "the log %q at %s extends itself at %s\n", n.Origin, plural(n.Size, "record"), plural(o.Size, "record"))
	default:
		name := fs.Arg(0)
		if name == "-" {
			name = "the input"
		}
		return fmt.Errorf("%s is not an agentsec proof: its first line is %q; make one with agentsec audit prove", name, truncate(string(first), 40))
	}
	return nil
}

// truncate shortens s for quoting in a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
