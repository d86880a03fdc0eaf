package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/textsafe"
	"github.com/agentsec/agentsec/store/postgres"
	"github.com/agentsec/agentsec/store/sqlite"
)

const auditUsage = `agentsec audit reads a durable audit log: the SQLite database that
'agentsec demo -db' or a Stack configured with Audit.Path writes, or the
PostgreSQL database replicas share, named by its postgres:// URL in -db.
It only reads.

Usage:

	agentsec audit <command> [flags]

Commands:

	verify       check every record and signed checkpoint against a verifier key
	query        print the records matching filters, a page at a time
	export       write every matching record as JSON lines, CSV or CEF
	checkpoint   print the latest signed checkpoint, to keep it elsewhere
	prove        make an inclusion or consistency proof
	check-proof  check a proof offline with only the verifier key

Run 'agentsec audit <command> -h' for a command's flags.
`

func (m *Main) runAudit(ctx context.Context, args []string) error {
	return m.dispatch(ctx, args, "audit ", auditUsage, map[string]func(context.Context, []string) error{
		"verify":      m.runAuditVerify,
		"query":       m.runAuditQuery,
		"export":      m.runAuditExport,
		"checkpoint":  m.runAuditCheckpoint,
		"prove":       m.runAuditProve,
		"check-proof": m.runAuditCheckProof,
	})
}

// newFlagSet returns the flag set of the command "agentsec <name>", whose
// usage line is synopsis and whose description is about. Its usage lists
// the flags under "Flags:", which a command without flags leaves out.
func newFlagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s\n\n%s", strings.TrimSpace("agentsec "+name+" "+synopsis), about)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args, which must hold no positional arguments beyond
// maxArgs. It keeps the flag package's own report off Stderr, so that a
// bad flag is one error line, a usageError; -h prints the usage on Stdout
// and returns errHelpShown.
func (m *Main) parseFlags(fs *flag.FlagSet, args []string, maxArgs int) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(m.Stdout)
		fs.Usage()
		return errHelpShown
	}
	if err != nil && strings.HasPrefix(err.Error(), "invalid ") {
		return usagef("%s: %v", fs.Name(), err)
	}
	if err != nil {
		return usagef("%s: %v; run 'agentsec %s -h' for usage", fs.Name(), err, fs.Name())
	}
	if fs.NArg() > maxArgs {
		return usagef("%s: unexpected argument %q; flags come before arguments", fs.Name(), fs.Arg(maxArgs))
	}
	return nil
}

// A readStore is an audit log's store, opened for reading.
type readStore interface {
	audit.Store
	audit.Querier
}

// openStore opens the log's database for reading: a SQLite file, or a
// PostgreSQL database given by its postgres:// URL.
func openStore(ctx context.Context, cmd, path string) (readStore, error) {
	if path == "" {
		return nil, fmt.Errorf("%s needs -db, the audit log's SQLite database or PostgreSQL URL", cmd)
	}
	if isPostgresURL(path) {
		db, err := postgres.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		return db.Audit(), nil
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory; -db names the audit log's SQLite database file", path)
	}
	return sqlite.Open(ctx, path, sqlite.Options{ReadOnly: true})
}

// isPostgresURL reports whether a -db value is a PostgreSQL URL rather
// than a file.
func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// maxKeyFile bounds what a key file is read for: a note verifier key is
// well under 300 bytes.
const maxKeyFile = 4 << 10

// readVerifier reads the verifier key file made by agentsec keygen.
func readVerifier(cmd, path string) (note.Verifier, error) {
	if path == "" {
		return nil, fmt.Errorf("%s needs -pubkey, the log's verifier key (NAME.pub from agentsec keygen)", cmd)
	}
	data, err := readFileMax(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("reading verifier key: %w", err)
	}
	key := strings.TrimSpace(string(data))
	if strings.HasPrefix(key, "PRIVATE+KEY+") {
		return nil, fmt.Errorf("%s is a signer key, which must stay secret; pass the verifier key, the .pub file made with it", path)
	}
	v, err := audit.NewVerifier(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; pass the NAME.pub file agentsec keygen wrote", path, err)
	}
	return v, nil
}

// readCheckpointFile reads a signed checkpoint from a file and parses it
// without checking its signature. What names the file in errors, such as
// "checkpoint".
func readCheckpointFile(what, path string) ([]byte, audit.Checkpoint, error) {
	signed, err := readFileMax(path, 16<<10)
	if err != nil {
		return nil, audit.Checkpoint{}, fmt.Errorf("reading %s: %w", what, err)
	}
	cp, err := parseSignedCheckpoint(signed)
	if err != nil {
		return nil, audit.Checkpoint{}, fmt.Errorf("%s %s: %w; a checkpoint file holds one signed checkpoint, as 'agentsec audit checkpoint -o' writes it",
			what, path, err)
	}
	return signed, cp, nil
}

// parseSignedCheckpoint parses a signed checkpoint without checking its
// signature, for commands that don't hold the verifier key.
func parseSignedCheckpoint(signed []byte) (audit.Checkpoint, error) {
	_, err := note.Open(signed, note.VerifierList())
	var unverified *note.UnverifiedNoteError
	if !errors.As(err, &unverified) {
		return audit.Checkpoint{}, fmt.Errorf("%w: not a signed note", audit.ErrCheckpoint)
	}
	return audit.ParseCheckpoint([]byte(unverified.Note.Text))
}

// matchCheckpoint checks that the log in store has the tree cp commits to,
// so that a proof made against cp can check out.
func matchCheckpoint(ctx context.Context, store audit.Store, name string, cp audit.Checkpoint) error {
	size, err := store.Size(ctx)
	if err != nil {
		return err
	}
	if cp.Size > size {
		return fmt.Errorf("%s covers %d records, but the log holds %d: it is from another log, or this log lost records (run agentsec audit verify)",
			name, cp.Size, size)
	}
	root, err := tlog.TreeHash(int64(cp.Size), hashReader{ctx, store})
	if err != nil {
		return fmt.Errorf("computing the log's tree at %d records: %w", cp.Size, err)
	}
	if root != cp.Root {
		return fmt.Errorf("%s does not match the log's tree at %d records: it is from another log, or this log was rewritten (run agentsec audit verify)",
			name, cp.Size)
	}
	return nil
}

// hashReader reads a store's tree hashes for tlog.
type hashReader struct {
	ctx   context.Context
	store audit.Store
}

func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return r.store.ReadHashes(r.ctx, indexes)
}

// readFileMax reads a file, refusing one of more than max bytes.
func readFileMax(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readMax(f, path, max)
}

func readMax(r io.Reader, name string, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return data, nil
}

// outputFile is where a command writes its output: standard output, a
// file that replaces path only once the output is complete, so a failed
// command leaves no partial file behind, or — for a path that names a
// device or a pipe — that, written directly.
type outputFile struct {
	io.Writer
	path   string
	tmp    *os.File
	direct *os.File
	mode   os.FileMode // of the file replaced, kept
}

// createOutput opens where a command writes to path ("" or "-" for
// standard output). Symbolic links are followed as the kernel follows
// them — which refuses, in a sticky directory such as /tmp, a link
// another user planted — so the file a link names is the one replaced (a
// checkpoint kept on storage the host can't rewrite, through a link); a
// device or a pipe (/dev/stdout) is written directly; a path that is the
// audit database at db, or one of its files, is refused.
func (m *Main) createOutput(path, db string) (*outputFile, error) {
	if path == "" || path == "-" {
		return &outputFile{Writer: m.Stdout}, nil
	}
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil, fmt.Errorf("%s is a directory; name a file", path)
	case err == nil && !fi.Mode().IsRegular():
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("creating output file: %w", err)
		}
		return &outputFile{Writer: f, path: path, direct: f}, nil
	case errors.Is(err, fs.ErrNotExist):
		if li, lerr := os.Lstat(path); lerr == nil && li.Mode()&os.ModeSymlink != 0 {
			return nil, fmt.Errorf("%s is a link to a file that does not exist; create that file first, or name another", path)
		}
		if err := notTheDatabase(path, db); err != nil {
			return nil, err
		}
		return newOutputBeside(path, 0o600) // an audit log's records are not for everyone
	case err != nil:
		return nil, fmt.Errorf("creating output file: %w", err)
	}
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("creating output file: %w", err)
	}
	for _, p := range []string{path, target} {
		if err := notTheDatabase(p, db); err != nil {
			return nil, err
		}
	}
	// May this command write the file, through its links? The kernel
	// says, opening it without changing it.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("creating output file: %w", err)
	}
	f.Close()
	return newOutputBeside(target, fi.Mode().Perm())
}

// newOutputBeside makes the temporary file that replaces path, of mode,
// once the output is complete.
func newOutputBeside(path string, mode os.FileMode) (*outputFile, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("creating output file: %w", err)
	}
	return &outputFile{Writer: tmp, path: path, tmp: tmp, mode: mode}, nil
}

// notTheDatabase refuses an output path that is the SQLite audit
// database at db or one of its files — the log, its WAL, its lock, its
// record log's segments — named as given or through links.
func notTheDatabase(out, db string) error {
	if db == "" || strings.Contains(db, "://") {
		return nil
	}
	bases := []string{db}
	if resolved, err := filepath.EvalSymlinks(db); err == nil {
		bases = append(bases, resolved)
	}
	outAbs, _ := filepath.Abs(out)
	for _, base := range bases {
		for _, suffix := range []string{"", "-wal", "-shm", "-journal", ".lock"} {
			if p, _ := filepath.Abs(base + suffix); p == outAbs || sameFile(base+suffix, out) {
				return fmt.Errorf("%s is the audit log's own file; write the output elsewhere", out)
			}
		}
		if segments, _ := filepath.Abs(base + "-segments"); filepath.Dir(outAbs) == segments || sameFile(filepath.Dir(out), base+"-segments") {
			return fmt.Errorf("%s is in the audit log's own directory of segments; write the output elsewhere", out)
		}
	}
	return nil
}

// sameFile reports whether a and b name one existing file.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// commit puts a complete output file in place.
func (o *outputFile) commit() error {
	if o.direct != nil {
		err := o.direct.Close()
		o.direct = nil
		return err
	}
	if o.tmp == nil {
		return nil
	}
	tmp := o.tmp
	o.tmp = nil
	err := errors.Join(tmp.Chmod(o.mode), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), o.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", o.path, err)
	}
	return nil
}

// discard removes an output file that was not committed.
func (o *outputFile) discard() {
	if o.direct != nil {
		o.direct.Close()
		o.direct = nil
	}
	if o.tmp != nil {
		o.tmp.Close()
		os.Remove(o.tmp.Name())
		o.tmp = nil
	}
}

// plural returns "n thing" or "n things".
func plural(n uint64, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// escapeText and oneLine escape what agentsec prints: see textsafe.
var (
	escapeText = textsafe.Escape
	oneLine    = textsafe.OneLine
)
