package audit

import (
	"context"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Hash is a SHA-256 hash: a node of the log's Merkle tree.
type Hash = tlog.Hash

// An Entry is a record as stored: its position, its canonical bytes, and
// the tree hashes appending it stored — its leaf hash first, then the hash
// of each subtree it completed, lowest first (see tlog.StoredHashes).
type Entry struct {
	Seq    uint64
	Data   []byte
	Hashes []Hash
	// Record is Data decoded, when the appender has it at hand, so a
	// store can fill its indexes without decoding; nil otherwise. Its Seq
	// is not set. A store must not keep it.
	Record *Record
}

// A Store keeps the log's entries and signed checkpoints. Implementations
// must be safe for concurrent use; audittest.Run checks one.
type Store interface {
	// Size returns the number of stored entries.
	Size(ctx context.Context) (uint64, error)
	// Append stores entries, which continue the log: the first one's Seq
	// equals the current size and the rest follow without gaps. Either
	// all are stored or none is, and once Append returns nil they are as
	// durable as the store promises. Append must not keep the entries'
	// Data or Hashes slices.
	Append(ctx context.Context, entries []Entry) error
	// Scan calls fn with each entry whose Seq is in [from, to), in order,
	// stopping at the first error fn returns and returning it unwrapped.
	// An entry's Data and Hashes are valid only until fn returns.
	Scan(ctx context.Context, from, to uint64, fn func(Entry) error) error
	// ReadHashes returns the stored tree hashes with the given stored
	// hash indexes (tlog.StoredHashIndex). It is an error to ask for a
	// hash not yet stored.
	ReadHashes(ctx context.Context, indexes []int64) ([]Hash, error)
	// AddCheckpoint stores a signed checkpoint of the tree of the first
	// size entries. A store keeps one checkpoint per size; adding one for
	// a size it has is an error unless the bytes are equal.
	AddCheckpoint(ctx context.Context, size uint64, signed []byte) error
	// Checkpoints calls fn with every stored checkpoint in increasing
	// size, stopping at the first error fn returns and returning it.
	Checkpoints(ctx context.Context, fn func(size uint64, signed []byte) error) error
	// LatestCheckpoint returns the stored checkpoint of the largest size,
	// or a nil signed checkpoint if there is none.
	LatestCheckpoint(ctx context.Context) (size uint64, signed []byte, err error)
	// Close releases the store's resources.
	Close() error
}

// A SharedStore is a Store that several Logs append to at once — in
// several processes, as replicas sharing one database do. A Log over a
// SharedStore appends through AppendShared: it learns the log's size
// under the store's lock, brings its tree up to that size from the stored
// hashes if other Logs appended meanwhile, and hands back the entries to
// store. Sequence numbers and tree hashes are so assigned one batch at a
// time, under one lock, and the tree can't fork however many Logs append.
type SharedStore interface {
	Store
	// AppendShared takes the store's append lock and calls build with the
	// log's size and a reader of the tree hashes stored so far (as
	// ReadHashes), then stores the entries build returns, which continue
	// the log from that size — one transaction under the lock: either all
	// are stored or none is. It calls build once; if build returns an
	// error, nothing is stored and AppendShared returns that error.
	AppendShared(ctx context.Context, build func(size uint64, read HashReader) ([]Entry, error)) error
}

// A GatheringStore is a store each of whose appends costs a sync, so
// that a busy log does better to append fewer, larger batches. A Log
// whose store is one gathers when it is busy — a caller leads a queue of
// four records or more, its own among them, or the last batch held as
// many: it waits GatherAppends before it takes its batch, for the records
// on their way to join it. A lone caller's batches hold its record
// alone, and a few callers hand on short queues: they never wait.
type GatheringStore interface {
	Store
	// GatherAppends returns how long a busy Log waits for records to
	// gather before it appends a batch, now: 0 for not at all. The Log
	// asks each time it would wait, holding its queue's lock: it must be
	// quick.
	GatherAppends() time.Duration
}

// An AppendForecaster is a store told ahead of an append: a Log calls
// AppendComing when a record is the first to queue behind the batch
// being appended, which makes the Log sure to append again — one call
// for each such next batch, each followed by an Append or AppendShared
// of its own. Two may be owed at once: one for a batch its leader has
// taken but not yet begun to append, one for the batch queued behind it.
// A store that carries other work in its appends' transactions can have
// that work wait for the announced append instead of going on its own.
type AppendForecaster interface {
	AppendComing()
}

// A HashReader reads stored tree hashes by their stored hash indexes
// (tlog.StoredHashIndex); it is a tlog.HashReader.
type HashReader = tlog.HashReaderFunc

// A Querier is a Store that can find the records matching a filter itself,
// typically through indexes, instead of Query scanning the whole log.
type Querier interface {
	// QueryEntries calls fn, in order, with the entries from Seq from on
	// that may match f, stopping at the first error fn returns and
	// returning it unwrapped. It may pass entries that don't match —
	// Query checks each record's own bytes against f — but must not skip
	// one that does. Entries need not carry their Hashes.
	QueryEntries(ctx context.Context, f Filter, from uint64, fn func(Entry) error) error
}

// storeHashReader reads tree hashes from a store for tlog's proof
// functions.
type storeHashReader struct {
	ctx   context.Context
	store Store
}

func (r storeHashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return r.store.ReadHashes(r.ctx, indexes)
}
