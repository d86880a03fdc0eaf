package audit

import "errors"

// statementPrefix starts the bytes of every statement the log's key
// signs that is not a checkpoint. A checkpoint's second line is its size,
// in decimal; a statement's second line is its kind, which is never a
// number, so no signature over one can pass for a signature over the
// other.
const statementPrefix = "agentsec signed statement\n"

// ErrNoSigner is returned by SignStatement for a log without a signing
// key.
var ErrNoSigner = errors.New("audit: the log has no signing key")

// SignStatement signs msg, a statement of the given kind that the log's
// owner makes — such as a trust change, whose record must prove that
// agentsec wrote it and not someone who can write the database — with the
// key that signs the log's checkpoints. kind must not be empty, contain a
// newline, or be a number. VerifyStatement checks the signature.
func (l *Log) SignStatement(kind string, msg []byte) ([]byte, error) {
	if l.signer == nil {
		return nil, ErrNoSigner
	}
	data, err := statement(kind, msg)
	if err != nil {
		return nil, err
	}
	return l.signer.Sign(data)
}

// VerifyStatement reports whether sig is the log's signature of msg as a
// statement of kind. A log without a verifier verifies nothing.
func (l *Log) VerifyStatement(kind string, msg, sig []byte) bool {
	if l.verifier == nil {
		return false
	}
	data, err := statement(kind, msg)
	return err == nil && l.verifier.Verify(data, sig)
}

// CanSign reports whether the log has a signing key.
func (l *Log) CanSign() bool { return l.signer != nil }

// statement returns the bytes signed for a statement of kind.
func statement(kind string, msg []byte) ([]byte, error) {
	if kind == "" || !validKind(kind) {
		return nil, errors.New("audit: a statement's kind must be a word, not a number, with no newline")
	}
	data := make([]byte, 0, len(statementPrefix)+len(kind)+1+len(msg))
	data = append(data, statementPrefix...)
	data = append(data, kind...)
	data = append(data, '\n')
	return append(data, msg...), nil
}

// validKind reports whether kind has no newline and is not all digits.
func validKind(kind string) bool {
	digits := true
	for _, c := range []byte(kind) {
		if c == '\n' {
			return false
		}
		if c < '0' || c > '9' {
			digits = false
		}
	}
	return !digits
}
