package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// A Checkpoint states the log's tree at one size, in the C2SP
// tlog-checkpoint format:
//
//	<origin>\n
//	<size, in decimal>\n
//	<root hash, in standard base64>\n
//
// A checkpoint is signed as a signed note (golang.org/x/mod/sumdb/note)
// with an Ed25519 key. Anyone holding the verifier key can check that a
// log extends the tree a checkpoint commits to, without trusting whoever
// runs the log.
type Checkpoint struct {
	// Origin names the log; it is the checkpoint's first line.
	Origin string
	Size   uint64
	Root   Hash
}

// ErrCheckpoint is returned, wrapped, for a malformed checkpoint.
var ErrCheckpoint = errors.New("malformed checkpoint")

// maxCheckpointSize bounds the signed checkpoints this package parses.
const maxCheckpointSize = 16 << 10

// Text returns the checkpoint's body, the text that is signed.
func (c Checkpoint) Text() []byte {
	b := make([]byte, 0, len(c.Origin)+70)
	b = append(b, c.Origin...)
	b = append(b, '\n')
	b = strconv.AppendUint(b, c.Size, 10)
	b = append(b, '\n')
	b = base64.StdEncoding.AppendEncode(b, c.Root[:])
	return append(b, '\n')
}

// ParseCheckpoint parses a checkpoint's body. It accepts extension lines
// after the root hash, as the format allows, and ignores them; the
// signature covers them all the same.
func ParseCheckpoint(text []byte) (Checkpoint, error) {
	if len(text) > maxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("audit: %w: %d bytes, more than %d", ErrCheckpoint, len(text), maxCheckpointSize)
	}
	if !bytes.HasSuffix(text, []byte("\n")) {
		return Checkpoint{}, fmt.Errorf("audit: %w: does not end in a newline", ErrCheckpoint)
	}
	lines := strings.Split(string(text[:len(text)-1]), "\n")
	if len(lines) < 3 {
		return Checkpoint{}, fmt.Errorf("audit: %w: %d lines, want origin, size and root hash", ErrCheckpoint, len(lines))
	}
	var c Checkpoint
	if err := checkOrigin(lines[0]); err != nil {
		return Checkpoint{}, err
	}
	c.Origin = lines[0]
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("audit: %w: size %q is not a decimal number", ErrCheckpoint, lines[1])
	}
	c.Size = size
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	// The decoder skips '\r', so compare the encoding too: one checkpoint
	// has one body.
	if err != nil || len(root) != len(c.Root) || base64.StdEncoding.EncodeToString(root) != lines[2] {
		return Checkpoint{}, fmt.Errorf("audit: %w: root hash %q is not 32 bytes of base64", ErrCheckpoint, lines[2])
	}
	copy(c.Root[:], root)
	for i, ext := range lines[3:] {
		if ext == "" {
			return Checkpoint{}, fmt.Errorf("audit: %w: empty extension line %d", ErrCheckpoint, i+1)
		}
	}
	return c, nil
}

// checkOrigin reports whether s can be a checkpoint origin: non-empty
// printable ASCII or UTF-8 without control characters.
func checkOrigin(s string) error {
	if s == "" {
		return fmt.Errorf("audit: %w: empty origin", ErrCheckpoint)
	}
	if len(s) > 256 {
		return fmt.Errorf("audit: %w: origin longer than 256 bytes", ErrCheckpoint)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return fmt.Errorf("audit: %w: origin %q has character %U", ErrCheckpoint, s, r)
		}
	}
	return nil
}

// SignCheckpoint returns c as a note signed by signer.
func SignCheckpoint(c Checkpoint, signer note.Signer) ([]byte, error) {
	if err := checkOrigin(c.Origin); err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: string(c.Text())}, signer)
}

// OpenCheckpoint checks that signed is a checkpoint note signed by
// verifier's key and returns the checkpoint. A note without a valid
// signature by that key — unsigned, signed by another key, or altered —
// is an error, as is a malformed body.
func OpenCheckpoint(signed []byte, verifier note.Verifier) (Checkpoint, error) {
	if len(signed) > maxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("audit: %w: %d bytes, more than %d", ErrCheckpoint, len(signed), maxCheckpointSize)
	}
	n, err := note.Open(signed, note.VerifierList(verifier))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			return Checkpoint{}, fmt.Errorf("audit: checkpoint is not signed by key %q", verifier.Name())
		case errors.As(err, &invalid):
			return Checkpoint{}, fmt.Errorf("audit: checkpoint signature by key %q does not verify: the checkpoint was altered", verifier.Name())
		}
		return Checkpoint{}, fmt.Errorf("audit: %w: %v", ErrCheckpoint, err)
	}
	return ParseCheckpoint([]byte(n.Text))
}

// GenerateKey returns a new Ed25519 signing key named name and its
// verifier key, both in the note key format:
// "PRIVATE+KEY+<name>+<hash>+<key>" and "<name>+<hash>+<key>".
func GenerateKey(name string) (signerKey, verifierKey string, err error) {
	// note.GenerateKey takes any name, but its keys and signatures parse
	// only with a name that is non-empty UTF-8 without '+' or spaces, and
	// notes open only without control characters.
	if name == "" || !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool {
		return r == '+' || unicode.IsSpace(r) || unicode.IsControl(r)
	}) {
		return "", "", fmt.Errorf("audit: key name %q must be non-empty, without spaces, control characters or '+'", name)
	}
	return note.GenerateKey(rand.Reader, name)
}

// NewSigner parses a signer key made by GenerateKey and returns the signer
// and the matching verifier.
func NewSigner(signerKey string) (note.Signer, note.Verifier, error) {
	signer, err := note.NewSigner(signerKey)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: malformed signer key: %w", err)
	}
	// "PRIVATE+KEY+<name>+<hash>+<base64 of 0x01 || seed>"
	// Base64 has '+' in its alphabet, so split off only the first four.
	fields := strings.SplitN(signerKey, "+", 5)
	if len(fields) != 5 {
		return nil, nil, errors.New("audit: malformed signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(fields[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return nil, nil, errors.New("audit: signer key is not an Ed25519 key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(signer.Name(), pub)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: deriving verifier key: %w", err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: deriving verifier key: %w", err)
	}
	if verifier.KeyHash() != signer.KeyHash() {
		return nil, nil, errors.New("audit: signer key's hash does not match its key")
	}
	return signer, verifier, nil
}

// NewVerifier parses a verifier key made by GenerateKey.
func NewVerifier(verifierKey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(verifierKey))
	if err != nil {
		return nil, fmt.Errorf("audit: malformed verifier key: %w", err)
	}
	return v, nil
}
