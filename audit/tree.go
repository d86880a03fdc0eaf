package audit

import (
	"fmt"
	"math/bits"

	"golang.org/x/mod/sumdb/tlog"
)

// The log's records are the leaves of an RFC 6962 Merkle tree, stored the
// way golang.org/x/mod/sumdb/tlog lays it out: appending record n stores
// its leaf hash and the hash of every subtree it completes, one per
// trailing 1 bit of n, at tlog.StoredHashIndex(0, n) onwards.
//
// A frontier holds the roots of the perfect subtrees that make up the
// tree of the first n records: frontier[k] is valid iff bit k of n is
// set. With it, the log computes what each append stores and the tree's
// root without reading anything back from the store.
type frontier [64]Hash

// appendLeaf appends to dst the stored hashes of record n, whose leaf hash
// is leaf, and advances f from size n to size n+1.
func (f *frontier) appendLeaf(dst []Hash, n uint64, leaf Hash) []Hash {
	h := leaf
	dst = append(dst, h)
	k := 0
	for ; n>>k&1 == 1; k++ {
		h = tlog.NodeHash(f[k], h)
		dst = append(dst, h)
	}
	f[k] = h
	return dst
}

// root returns the tree hash of the first n records, f being the frontier
// at size n.
func (f *frontier) root(n uint64) Hash {
	if n == 0 {
		return emptyTreeHash
	}
	var acc Hash
	first := true
	for k := 0; k < 64; k++ {
		if n>>k&1 == 0 {
			continue
		}
		if first {
			acc, first = f[k], false
		} else {
			acc = tlog.NodeHash(f[k], acc)
		}
	}
	return acc
}

// load sets f to the frontier of the tree of size n, from stored hashes.
func (f *frontier) load(n uint64, r tlog.HashReader) error {
	if n > MaxLogSize {
		return fmt.Errorf("the store says the log holds %d records, more than a log can (%d): its size is damaged; run agentsec audit verify", n, uint64(MaxLogSize))
	}
	levels, indexes := frontierIndexes(n)
	if len(indexes) == 0 {
		return nil
	}
	hashes, err := r.ReadHashes(indexes)
	if err != nil {
		return err
	}
	if len(hashes) != len(indexes) {
		return fmt.Errorf("read %d tree hashes, want %d", len(hashes), len(indexes))
	}
	for i, lv := range levels {
		f[lv] = hashes[i]
	}
	return nil
}

// frontierIndexes returns the stored hash indexes of the frontier of the
// tree of size n, lowest level first, with their levels.
func frontierIndexes(n uint64) (levels []int, indexes []int64) {
	for k := 0; k < 64; k++ {
		if n>>k&1 == 0 {
			continue
		}
		start := n &^ (1<<(k+1) - 1) // the leaves above bit k
		levels = append(levels, k)
		indexes = append(indexes, tlog.StoredHashIndex(k, int64(start>>k)))
	}
	return levels, indexes
}

// storedHashCount returns how many hashes record n stores.
func storedHashCount(n uint64) int { return 1 + bits.TrailingZeros64(^n) }

// emptyTreeHash is the RFC 6962 hash of the empty tree, SHA-256 of nothing.
var emptyTreeHash = Hash{
	0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
	0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
}
