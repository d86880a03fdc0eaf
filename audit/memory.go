package audit

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/mod/sumdb/tlog"
)

// MemoryStore is a Store in process memory. Entries are lost when the
// process exits.
//
// Record bytes are packed into large shared chunks, and record offsets and
// tree hashes into fixed-size pages that hold no pointers, so a long log
// costs few allocations, no copying as it grows, and little
// garbage-collector work.
type MemoryStore struct {
	chunkPool *warm[[]byte]
	refPool   *warm[[memoryPageSize]dataRef]
	hashPool  *warm[[memoryPageSize]Hash]

	mu          sync.RWMutex
	size        uint64
	hashCount   int64
	chunks      [][]byte
	refs        []*[memoryPageSize]dataRef
	hashes      []*[memoryPageSize]Hash
	checkpoints map[uint64][]byte
	latest      uint64
}

var _ Store = (*MemoryStore)(nil)

// memoryChunk is the size of the chunks record bytes are packed into.
const memoryChunk = 1 << 20

// memoryPageSize is the number of offsets or hashes one page holds.
const memoryPageSize = 4096

type dataRef struct{ chunk, off, n uint32 }

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		checkpoints: map[uint64][]byte{},
		chunkPool:   newWarm(func() *[]byte { b := make([]byte, 0, memoryChunk); return &b }, touchBytes),
		refPool:     newWarm(func() *[memoryPageSize]dataRef { return new([memoryPageSize]dataRef) }, touchRefs),
		hashPool:    newWarm(func() *[memoryPageSize]Hash { return new([memoryPageSize]Hash) }, touchHashes),
	}
}

func (s *MemoryStore) ref(seq uint64) *dataRef {
	return &s.refs[seq/memoryPageSize][seq%memoryPageSize]
}

func (s *MemoryStore) hash(index int64) *Hash {
	return &s.hashes[index/memoryPageSize][index%memoryPageSize]
}

// Size implements Store.
func (s *MemoryStore) Size(context.Context) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.size, nil
}

// Append implements Store.
func (s *MemoryStore) Append(_ context.Context, entries []Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range entries {
		if want := s.size + uint64(i); e.Seq != want {
			return fmt.Errorf("audit: append of entry %d to a log of size %d", e.Seq, want)
		}
		if len(e.Hashes) != storedHashCount(e.Seq) {
			return fmt.Errorf("audit: entry %d has %d tree hashes, want %d", e.Seq, len(e.Hashes), storedHashCount(e.Seq))
		}
	}
	for _, e := range entries {
		if s.size%memoryPageSize == 0 {
			s.refs = append(s.refs, s.refPool.get())
		}
		*s.ref(s.size) = s.pack(e.Data)
		for _, h := range e.Hashes {
			if s.hashCount%memoryPageSize == 0 {
				s.hashes = append(s.hashes, s.hashPool.get())
			}
			*s.hash(s.hashCount) = h
			s.hashCount++
		}
		s.size++
	}
	return nil
}

// pack copies data into the chunk arena.
func (s *MemoryStore) pack(data []byte) dataRef {
	last := len(s.chunks) - 1
	if last < 0 || len(s.chunks[last])+len(data) > cap(s.chunks[last]) {
		chunk := *s.chunkPool.get()
		if cap(chunk) < len(data) {
			chunk = make([]byte, 0, len(data))
		}
		s.chunks = append(s.chunks, chunk)
		last++
	}
	c := s.chunks[last]
	ref := dataRef{chunk: uint32(last), off: uint32(len(c)), n: uint32(len(data))}
	s.chunks[last] = append(c, data...)
	return ref
}

// Scan implements Store. It holds no lock while fn runs.
func (s *MemoryStore) Scan(ctx context.Context, from, to uint64, fn func(Entry) error) error {
	var hashes [64]Hash
	for seq := from; seq < to; seq++ {
		if seq%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		s.mu.RLock()
		if seq >= s.size {
			s.mu.RUnlock()
			return nil
		}
		ref := s.ref(seq)
		// Chunks are append-only, so data stays valid without the lock.
		data := s.chunks[ref.chunk][ref.off : ref.off+ref.n : ref.off+ref.n]
		first, n := tlog.StoredHashIndex(0, int64(seq)), storedHashCount(seq)
		for i := range n {
			hashes[i] = *s.hash(first + int64(i))
		}
		s.mu.RUnlock()
		if err := fn(Entry{Seq: seq, Data: data, Hashes: hashes[:n:n]}); err != nil {
			return err
		}
	}
	return nil
}

// ReadHashes implements Store.
func (s *MemoryStore) ReadHashes(_ context.Context, indexes []int64) ([]Hash, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Hash, len(indexes))
	for i, idx := range indexes {
		if idx < 0 || idx >= s.hashCount {
			return nil, fmt.Errorf("audit: tree hash %d not stored (have %d)", idx, s.hashCount)
		}
		out[i] = *s.hash(idx)
	}
	return out, nil
}

// AddCheckpoint implements Store.
func (s *MemoryStore) AddCheckpoint(_ context.Context, size uint64, signed []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.checkpoints[size]; ok {
		if bytes.Equal(old, signed) {
			return nil
		}
		return fmt.Errorf("audit: a different checkpoint of size %d is stored", size)
	}
	s.checkpoints[size] = bytes.Clone(signed)
	s.latest = max(s.latest, size)
	return nil
}

// Checkpoints implements Store.
func (s *MemoryStore) Checkpoints(_ context.Context, fn func(uint64, []byte) error) error {
	s.mu.RLock()
	sizes := make([]uint64, 0, len(s.checkpoints))
	for size := range s.checkpoints {
		sizes = append(sizes, size)
	}
	s.mu.RUnlock()
	slices.Sort(sizes)
	for _, size := range sizes {
		s.mu.RLock()
		signed := bytes.Clone(s.checkpoints[size])
		s.mu.RUnlock()
		if err := fn(size, signed); err != nil {
			return err
		}
	}
	return nil
}

// LatestCheckpoint implements Store.
func (s *MemoryStore) LatestCheckpoint(context.Context) (uint64, []byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.latest, bytes.Clone(s.checkpoints[s.latest]), nil
}

// Close implements Store.
func (s *MemoryStore) Close() error { return nil }
