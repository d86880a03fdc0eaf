package budget

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"unsafe"
)

// MemoryStore is a Store in process memory, for one process. Budgets are
// lost when the process exits.
type MemoryStore struct {
	shards [memoryShards]memoryShard
}

var _ Store = (*MemoryStore)(nil)

// memoryShards spreads sessions over several maps so that callers on
// different sessions rarely touch the same lock.
const memoryShards = 64

// cacheLinePad is two cache lines, since adjacent-line prefetching makes
// neighbours on a 64-byte line pair interfere too.
const cacheLinePad = 128

type memoryShard struct {
	mu       sync.RWMutex
	sessions map[string]*memorySession
	_        [cacheLinePad - unsafe.Sizeof(sync.RWMutex{}) - unsafe.Sizeof(map[string]int(nil))]byte
}

// memorySession is padded to its own cache lines: sessions created one
// after another would otherwise share a line, and callers on different
// sessions would contend for it.
type memorySession struct {
	mu    sync.Mutex
	state State
	_     [cacheLinePad - unsafe.Sizeof(sync.Mutex{}) - unsafe.Sizeof(State{})]byte
}

var shardSeed = maphash.MakeSeed()

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	s := &MemoryStore{}
	for i := range s.shards {
		s.shards[i].sessions = make(map[string]*memorySession)
	}
	return s
}

func (s *MemoryStore) shard(session string) *memoryShard {
	return &s.shards[maphash.String(shardSeed, session)%memoryShards]
}

func (s *MemoryStore) session(session string) (*memorySession, error) {
	sh := s.shard(session)
	sh.mu.RLock()
	ms := sh.sessions[session]
	sh.mu.RUnlock()
	if ms == nil {
		return nil, fmt.Errorf("budget: session %q: %w", session, ErrUnknownSession)
	}
	return ms, nil
}

// Create implements Store.
func (s *MemoryStore) Create(_ context.Context, session string, limits Limits) (State, error) {
	if err := CheckSession(session); err != nil {
		return State{}, err
	}
	if err := limits.Validate(); err != nil {
		return State{}, err
	}
	sh := s.shard(session)
	sh.mu.Lock()
	ms := sh.sessions[session]
	if ms == nil {
		ms = &memorySession{state: State{Limits: limits}}
		sh.sessions[session] = ms
	}
	sh.mu.Unlock()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.state, nil
}

// Reserve implements Store.
func (s *MemoryStore) Reserve(_ context.Context, session string) (State, error) {
	ms, err := s.session(session)
	if err != nil {
		return State{}, err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if !ms.state.Allows() {
		return ms.state, &ExceededError{Session: session, State: ms.state}
	}
	ms.state.Used.Calls++
	return ms.state, nil
}

// Commit implements Store.
func (s *MemoryStore) Commit(_ context.Context, session string, tokens int64) error {
	return s.add(session, 0, tokens)
}

// CommitWithin implements Store.
func (s *MemoryStore) CommitWithin(_ context.Context, session string, tokens int64) (State, error) {
	ms, err := s.session(session)
	if err != nil {
		return State{}, err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if err := CheckTokens(ms.state.Used.Tokens, tokens); err != nil {
		return ms.state, err
	}
	if ms.state.Used.Tokens >= ms.state.Limits.Tokens {
		return ms.state, &ExceededError{Session: session, State: ms.state}
	}
	ms.state.Used.Tokens += tokens
	return ms.state, nil
}

// Release implements Store.
func (s *MemoryStore) Release(_ context.Context, session string) error {
	ms, err := s.session(session)
	if err != nil {
		return err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.state.Used.Calls == 0 {
		return fmt.Errorf("budget: session %q: release without a reserved call", session)
	}
	ms.state.Used.Calls--
	return nil
}

// Record implements Store.
func (s *MemoryStore) Record(_ context.Context, session string, tokens int64) error {
	return s.add(session, 1, tokens)
}

func (s *MemoryStore) add(session string, calls, tokens int64) error {
	ms, err := s.session(session)
	if err != nil {
		return err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if err := CheckTokens(ms.state.Used.Tokens, tokens); err != nil {
		return err
	}
	if err := CheckTokens(ms.state.Used.Calls, calls); err != nil {
		return fmt.Errorf("budget: session %q: call counter would overflow", session)
	}
	ms.state.Used.Tokens += tokens
	ms.state.Used.Calls += calls
	return nil
}

// Get implements Store.
func (s *MemoryStore) Get(_ context.Context, session string) (State, error) {
	ms, err := s.session(session)
	if err != nil {
		return State{}, err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.state, nil
}

// Forget implements Store.
func (s *MemoryStore) Forget(_ context.Context, session string) error {
	sh := s.shard(session)
	sh.mu.Lock()
	delete(sh.sessions, session)
	sh.mu.Unlock()
	return nil
}

// Len returns the number of sessions the store holds.
func (s *MemoryStore) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.sessions)
		sh.mu.RUnlock()
	}
	return n
}

// Close implements Store; a MemoryStore holds nothing to release.
func (s *MemoryStore) Close() error { return nil }
