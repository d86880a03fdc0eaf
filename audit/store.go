package audit

import (
	"context"
	"encoding/hex"
)

// Hash is a SHA-256 hash.
type Hash [32]byte

// String returns the hash in lowercase hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// An Entry is a record as stored: its position, its canonical bytes and
// the chain hash through it.
type Entry struct {
	Seq  uint64
	Data []byte
	Hash Hash
}

// A Store keeps the log's entries in order. Implementations must be safe
// for concurrent use; audittest.Run checks one.
type Store interface {
	// Head returns the number of stored entries and the Hash of the
	// last one, or the zero Hash if there are none.
	Head(ctx context.Context) (size uint64, last Hash, err error)
	// Append stores entries, which continue the log: the first one's Seq
	// equals the current size and the rest follow without gaps. Either
	// all are stored or none is, and once Append returns nil they are as
	// durable as the store promises. Append must not keep the entries'
	// Data slices.
	Append(ctx context.Context, entries []Entry) error
	// Scan calls fn with each entry whose Seq is in [from, to), in order,
	// stopping at the first error fn returns and returning it. An entry's
	// Data is valid only until fn returns.
	Scan(ctx context.Context, from, to uint64, fn func(Entry) error) error
	// Close releases the store's resources.
	Close() error
}
