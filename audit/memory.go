package audit

import (
	"context"
	"fmt"
	"sync"
)

// MemoryStore is a Store in process memory. Entries are lost when the
// process exits.
//
// Record bytes are packed into large shared chunks, and hashes into
// fixed-size pages that hold no pointers, so a long log costs few
// allocations, no copying as it grows, and little garbage-collector work.
type MemoryStore struct {
	mu     sync.RWMutex
	size   uint64
	chunks [][]byte
	pages  []*memoryPage
}

var _ Store = (*MemoryStore)(nil)

// memoryChunk is the size of the chunks record bytes are packed into.
const memoryChunk = 1 << 20

// memoryPageSize is the number of entries one page indexes.
const memoryPageSize = 4096

type memoryPage struct {
	refs   [memoryPageSize]dataRef
	hashes [memoryPageSize]Hash
}

type dataRef struct{ chunk, off, n uint32 }

// at returns the slot of entry seq, which must be below the size.
func (s *MemoryStore) at(seq uint64) (*dataRef, *Hash) {
	p := s.pages[seq/memoryPageSize]
	i := seq % memoryPageSize
	return &p.refs[i], &p.hashes[i]
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{} }

// Head implements Store.
func (s *MemoryStore) Head(context.Context) (uint64, Hash, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.size == 0 {
		return 0, Hash{}, nil
	}
	_, h := s.at(s.size - 1)
	return s.size, *h, nil
}

// Append implements Store.
func (s *MemoryStore) Append(_ context.Context, entries []Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range entries {
		if want := s.size + uint64(i); e.Seq != want {
			return fmt.Errorf("audit: append of entry %d to a log of size %d", e.Seq, want)
		}
	}
	for _, e := range entries {
		if s.size%memoryPageSize == 0 {
			s.pages = append(s.pages, new(memoryPage))
		}
		ref, h := s.at(s.size)
		*ref, *h = s.pack(e.Data), e.Hash
		s.size++
	}
	return nil
}

// pack copies data into the chunk arena.
func (s *MemoryStore) pack(data []byte) dataRef {
	last := len(s.chunks) - 1
	if last < 0 || len(s.chunks[last])+len(data) > cap(s.chunks[last]) {
		s.chunks = append(s.chunks, make([]byte, 0, max(memoryChunk, len(data))))
		last++
	}
	c := s.chunks[last]
	ref := dataRef{chunk: uint32(last), off: uint32(len(c)), n: uint32(len(data))}
	s.chunks[last] = append(c, data...)
	return ref
}

// Scan implements Store. It holds no lock while fn runs.
func (s *MemoryStore) Scan(ctx context.Context, from, to uint64, fn func(Entry) error) error {
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
		ref, h := s.at(seq)
		data := s.chunks[ref.chunk][ref.off : ref.off+ref.n : ref.off+ref.n]
		hash := *h
		s.mu.RUnlock()
		// Chunks are append-only, so data stays valid without the lock.
		if err := fn(Entry{Seq: seq, Data: data, Hash: hash}); err != nil {
			return err
		}
	}
	return nil
}

// Close implements Store.
func (s *MemoryStore) Close() error { return nil }
