package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnavailable is returned, wrapped, when the log cannot store a record.
// Callers that must fail closed deny whatever the record was about.
var ErrUnavailable = errors.New("audit log unavailable")

// Options configure a Log.
type Options struct {
	// Namespace is given to records appended without one.
	Namespace string
	// Clock returns the time records are stamped with; nil means
	// time.Now.
	Clock func() time.Time
}

// A Log is an append-only audit log over a Store. Each entry's hash
// chains the hash of its record's bytes to the entry before it:
//
//	leaf  = SHA-256(0x00 || record bytes)
//	hash0 = SHA-256(0x01 || 32 zero bytes || leaf0)
//	hashN = SHA-256(0x01 || hashN-1 || leafN)
//
// so changing, removing, inserting or reordering any stored record changes
// every hash after it. A Log is safe for concurrent use.
type Log struct {
	store     Store
	namespace string
	clock     func() time.Time

	committer

	// headMu guards size and last, the log's head. Only the committing
	// leader changes them.
	headMu sync.Mutex
	size   uint64
	last   Hash

	// failure holds the error of the last append if it failed, and nil
	// once an append succeeds again.
	failure atomic.Pointer[error]
}

// NewLog opens a log over store, continuing from the entries it holds. It
// does not verify them; call Verify for that.
func NewLog(ctx context.Context, store Store, opts Options) (*Log, error) {
	if store == nil {
		return nil, errors.New("audit: log needs a store")
	}
	if err := checkNamespace(opts.Namespace); err != nil {
		return nil, err
	}
	size, last, err := store.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: reading log head: %w", err)
	}
	clock := opts.Clock
	if clock == nil {
		clock = time.Now
	}
	return &Log{store: store, namespace: opts.Namespace, clock: clock, size: size, last: last}, nil
}

func checkNamespace(ns string) error {
	r := Record{Event: "-", Namespace: ns}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("audit: namespace %q: %w", ns, err)
	}
	return nil
}

// Namespace returns the namespace given to records that lack one.
func (l *Log) Namespace() string { return l.namespace }

// Size returns the number of records in the log.
func (l *Log) Size() uint64 {
	size, _ := l.head()
	return size
}

func (l *Log) head() (uint64, Hash) {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	return l.size, l.last
}

// Err returns nil if the last append succeeded, and otherwise its error,
// which wraps ErrUnavailable. It is cheap enough to call before every
// governed call, so that a failing log stops calls before they run.
func (l *Log) Err() error {
	if p := l.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// Log appends rec and returns it as stored, with Seq, Time and Namespace
// set. The record is in the store, and as durable as the store makes it,
// when Log returns nil. An invalid record is an error wrapping
// ErrInvalidRecord; a store failure is an error wrapping ErrUnavailable,
// and nothing is appended.
//
// Concurrent calls are committed together: each encodes and hashes its
// record on its own, then one of them appends the waiting records to the
// store in a single Append.
func (l *Log) Log(ctx context.Context, rec Record) (Record, error) {
	rec.Time = l.clock().UTC()
	if rec.Namespace == "" {
		rec.Namespace = l.namespace
	}
	r := getPending()
	defer putPending(r)
	// The leading 0x00 is the leaf hash's domain separator.
	buf, err := EncodeRecord(append(r.buf[:0], 0x00), &rec)
	if err != nil {
		return Record{}, err
	}
	r.buf = buf
	r.leaf = sha256.Sum256(buf)
	l.commit(ctx, r)
	if r.err != nil {
		return Record{}, r.err
	}
	rec.Seq = r.seq
	return rec, nil
}

// chainHash returns the hash of the entry holding data after prev.
func chainHash(prev Hash, data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0x00})
	h.Write(data)
	var leaf Hash
	h.Sum(leaf[:0])
	return nodeHash(prev, leaf)
}

// nodeHash chains a record's leaf hash to the hash of the entry before.
func nodeHash(prev, leaf Hash) Hash {
	var node [1 + 2*len(Hash{})]byte
	node[0] = 0x01
	copy(node[1:], prev[:])
	copy(node[1+len(Hash{}):], leaf[:])
	return sha256.Sum256(node[:])
}

// A VerifyError names the first entry that failed verification.
type VerifyError struct {
	Seq    uint64
	Reason string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: record %d: %s", e.Seq, e.Reason)
}

// ErrVerify is matched by every *VerifyError.
var ErrVerify = errors.New("audit log verification failed")

// Is reports whether target is ErrVerify.
func (e *VerifyError) Is(target error) bool { return target == ErrVerify }

// Verify recomputes the chain from every stored record's bytes, checks
// that each record is canonical, that each stored hash matches, and that
// the log ends where this Log's head says. It returns the number of
// records verified and, on failure, a *VerifyError naming the first bad
// record.
func (l *Log) Verify(ctx context.Context) (uint64, error) {
	size, last := l.head()
	var (
		prev Hash
		next uint64
	)
	err := l.store.Scan(ctx, 0, size, func(e Entry) error {
		if e.Seq != next {
			return &VerifyError{Seq: next, Reason: fmt.Sprintf("missing; the store skips to record %d", e.Seq)}
		}
		if _, err := DecodeRecord(e.Data); err != nil {
			return &VerifyError{Seq: e.Seq, Reason: err.Error()}
		}
		h := chainHash(prev, e.Data)
		if h != e.Hash {
			return &VerifyError{Seq: e.Seq, Reason: "stored hash does not match the record bytes and the record before"}
		}
		prev = h
		next++
		return nil
	})
	if err != nil {
		var ve *VerifyError
		if errors.As(err, &ve) {
			return next, err
		}
		return next, fmt.Errorf("audit: reading record %d: %w", next, err)
	}
	if next != size {
		return next, &VerifyError{Seq: next, Reason: fmt.Sprintf("missing; the log should hold %d records", size)}
	}
	if prev != last {
		return next, &VerifyError{Seq: size - 1, Reason: "chain does not end at the log's head hash"}
	}
	return next, nil
}

// Close closes the log's store.
func (l *Log) Close() error { return l.store.Close() }
