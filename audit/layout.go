package audit

import (
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// How the stores keep an entry: its tree hashes (Entry.Hashes) as one
// byte string, 32 bytes each, lowest level first; and the tree hash with
// a given stored index in the hashes of the last entry of its subtree, at
// its level.

// MaxStoredHashes bounds the tree hashes one entry stores: one per level
// of the tree.
const MaxStoredHashes = 64

// MaxLogSize bounds the records a log holds: 2^62, far beyond any disk,
// and the most whose tree hashes all have stored indexes below the
// largest int64. A store that reports more is damaged.
const MaxLogSize = 1 << 62

// maxStoredHashIndex is the stored index of the first tree hash beyond a
// log of MaxLogSize records: every hash such a log holds is below it.
var maxStoredHashIndex = tlog.StoredHashIndex(0, MaxLogSize)

const hashSize = tlog.HashSize

// PackHashes returns hs as one byte string.
func PackHashes(hs []Hash) []byte {
	b := make([]byte, 0, hashSize*len(hs))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

// UnpackHashes splits raw, a PackHashes string, into the hashes of buf.
func UnpackHashes(raw []byte, buf *[MaxStoredHashes]Hash) ([]Hash, error) {
	if len(raw)%hashSize != 0 || len(raw)/hashSize > len(buf) {
		return nil, fmt.Errorf("tree hashes of %d bytes", len(raw))
	}
	n := len(raw) / hashSize
	for i := range n {
		buf[i] = Hash(raw[hashSize*i : hashSize*i+hashSize])
	}
	return buf[:n:n], nil
}

// HashHolder returns the entry whose hashes hold the tree hash with
// stored index idx, and the hash's level, its place in them. An index no
// log of MaxLogSize records stores is an error: it comes from a damaged
// size (and the largest int64 would not let tlog's split end).
func HashHolder(idx int64) (seq int64, level int, err error) {
	if idx < 0 || idx >= maxStoredHashIndex {
		return 0, 0, fmt.Errorf("tree hash index %d outside a log of at most %d records", idx, uint64(MaxLogSize))
	}
	level, n := tlog.SplitStoredHashIndex(idx)
	return (n+1)<<level - 1, level, nil
}

// HashAt returns the hash at level of raw, a PackHashes string, or false
// if raw holds none there.
func HashAt(raw []byte, level int) (Hash, bool) {
	if len(raw) < hashSize*(level+1) {
		return Hash{}, false
	}
	return Hash(raw[hashSize*level : hashSize*level+hashSize]), true
}

// Decoded returns e's record: e.Record if the appender passed it, or
// e.Data decoded.
func (e Entry) Decoded() (*Record, error) {
	if e.Record != nil {
		return e.Record, nil
	}
	r, err := DecodeRecord(e.Data)
	if err != nil {
		return nil, fmt.Errorf("entry %d: %w", e.Seq, err)
	}
	return &r, nil
}
