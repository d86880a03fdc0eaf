package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/agentsec/agentsec/audit"
)

// runAuditVerify checks a whole log from its stored bytes against the
// verifier key and the checkpoints the user kept.
func (m *Main) runAuditVerify(ctx context.Context, args []string) error {
	fs := newFlagSet("audit verify", "-db FILE -pubkey FILE [-trusted CHECKPOINT_FILE]...",
		`Verify checks every record of the log from its stored bytes, recomputes the
Merkle tree, and checks every signed checkpoint stored in the log and every
-trusted one against it with the verifier key. It names the first record or
checkpoint that does not hold, and exits 0 only when everything holds.
`)
	db := fs.String("db", "", "the audit log's SQLite database `file`, or its PostgreSQL URL")
	pubkey := fs.String("pubkey", "", "the log's verifier key `file` (NAME.pub from agentsec keygen)")
	var trustedFiles []string
	fs.Func("trusted", "a signed checkpoint `file` kept away from the log (repeatable)", func(s string) error {
		trustedFiles = append(trustedFiles, s)
		return nil
	})
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	verifier, err := readVerifier("audit verify", *pubkey)
	if err != nil {
		return err
	}
	var trusted [][]byte
	for _, path := range trustedFiles {
		signed, _, err := readCheckpointFile("trusted checkpoint", path)
		if err != nil {
			return err
		}
		if _, err := audit.OpenCheckpoint(signed, verifier); err != nil {
			return fmt.Errorf("trusted checkpoint %s: %w%s", path, err, keyHint(err, *pubkey))
		}
		trusted = append(trusted, signed)
	}
	store, err := openStore(ctx, "audit verify", *db)
	if err != nil {
		return err
	}
	defer store.Close()

	opts := audit.VerifyOptions{Verifier: verifier, Trusted: trusted, TrustedNames: trustedFiles}
	var progress progressLine
	if m.StderrTerminal {
		opts.Progress = func(done, total uint64) {
			pct := uint64(100)
			if total > 0 {
				pct = done * 100 / total
			}
			progress.show(m, fmt.Sprintf("verifying: %d of %d records (%d%%)", done, total, pct))
		}
	}
	res, err := audit.Verify(ctx, store, opts)
	progress.clear(m)
	if err != nil {
		if _, ok := errors.AsType[*audit.CheckpointError](err); ok {
			return fmt.Errorf("%w%s", err, keyHint(err, *pubkey))
		}
		return err
	}
	switch {
	case res.Unvouched() && res.Checkpoints > 0:
		// A writer that signed the empty log then stopped signing is
		// not how agentsec runs: the records may be forged, and opening
		// the log with the key would sign them.
		return fmt.Errorf("no signed checkpoint covers any of the %d records — only one of the empty log, which vouches for none — so they may have been written by someone without the key; "+
			"examine them before anything signs them (a gateway opening this log with its key would)", res.Records)
	case res.Unvouched():
		return fmt.Errorf("no signed checkpoint covers any of the %d records, so nothing ties them to the key; "+
			"if the log's writer stopped before signing one, open the log once with its signer key", res.Records)
	}

	fmt.Fprintf(m.Stdout, "verified %s: tree root %s; ", plural(res.Records, "record"),
		base64.StdEncoding.EncodeToString(res.Root[:]))
	switch n := uint64(res.Checkpoints); {
	case n == 0:
		fmt.Fprint(m.Stdout, "no signed checkpoints")
	case n == 1:
		fmt.Fprintf(m.Stdout, "1 signed checkpoint matches, covering %s", plural(res.Latest.Size, "record"))
	default:
		fmt.Fprintf(m.Stdout, "%d signed checkpoints match, the latest covers %s", n, plural(res.Latest.Size, "record"))
	}
	if u := res.Uncovered(); u > 0 {
		fmt.Fprintf(m.Stdout, " (%s not yet covered)", plural(u, "newer record"))
	}
	fmt.Fprintln(m.Stdout)
	return nil
}

// keyHint returns a hint for an error about a checkpoint signed by
// another key.
func keyHint(err error, pubkey string) string {
	if !strings.Contains(err.Error(), "is not signed by key") {
		return ""
	}
	return fmt.Sprintf(" (is %s the log's verifier key? if it is, the log was signed by someone else)", pubkey)
}

// progressLine is a status line on a terminal, rewritten in place.
type progressLine struct{ width int }

func (p *progressLine) show(m *Main, s string) {
	pad := ""
	if n := p.width - len(s); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(m.Stderr, "\r%s%s", s, pad)
	p.width = len(s)
}

func (p *progressLine) clear(m *Main) {
	if p.width > 0 {
		fmt.Fprintf(m.Stderr, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}
