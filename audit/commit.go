package audit

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Appends are group-committed. A caller whose record is encoded and
// hashed joins a queue; if no one is committing, it becomes the leader:
// it takes the whole queue, chains the hashes, writes the batch with one
// Store.Append, and wakes the others with their results. If more records
// queued meanwhile, it hands leadership to the first of them and returns,
// so no caller commits for others indefinitely. Without contention every
// caller is its own leader and never waits; under contention the store
// sees one Append, and for a durable store one sync, per batch.

// A pending record waits in the queue. pendings are pooled, with their
// buffers, so an append allocates nothing.
type pending struct {
	buf  []byte // 0x00 || record bytes
	leaf Hash
	seq  uint64
	err  error
	// state is set to resultReady or handedLead, then done is signalled.
	// A waiter spins on state for a moment before it blocks on done: a
	// batch usually commits sooner than a goroutine can sleep and wake.
	state atomic.Uint32
	done  chan struct{}
}

const (
	waiting uint32 = iota
	resultReady
	handedLead
)

// spinChecks is how many times a waiter looks at its state, yielding in
// between, before it blocks.
const spinChecks = 64

// wait returns p's new state once it is signalled.
func (p *pending) wait() uint32 {
	for range spinChecks {
		if st := p.state.Load(); st != waiting {
			<-p.done // the signal follows the state at once
			return st
		}
		runtime.Gosched()
	}
	<-p.done
	return p.state.Load()
}

func (p *pending) signal(st uint32) {
	p.state.Store(st)
	p.done <- struct{}{}
}

var pendingPool = sync.Pool{New: func() any {
	return &pending{buf: make([]byte, 0, 512), done: make(chan struct{}, 1)}
}}

func getPending() *pending { return pendingPool.Get().(*pending) }

func putPending(p *pending) {
	p.err = nil
	p.state.Store(waiting)
	if cap(p.buf) > 4<<10 {
		p.buf = make([]byte, 0, 512) // don't pool the rare huge record's buffer
	}
	pendingPool.Put(p)
}

// committer is the group-commit state of a Log.
type committer struct {
	qmu     sync.Mutex
	queue   []*pending
	leading bool // someone is committing or has been handed leadership

	// Owned by the leader of the moment.
	spare   []*pending
	entries []Entry
}

// commit returns once p is stored or has failed, with p.seq or p.err set.
func (l *Log) commit(ctx context.Context, p *pending) {
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	if l.leading {
		l.qmu.Unlock()
		if p.wait() == resultReady {
			return
		}
		p.state.Store(waiting)
		l.qmu.Lock()
	}
	l.leading = true
	batch := l.queue
	l.queue = l.spare[:0]
	l.qmu.Unlock()

	// Records others are waiting for must not be lost to this caller
	// cancelling its context.
	if ctx.Done() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	l.writeBatch(ctx, batch, p)

	l.qmu.Lock()
	clear(batch)
	l.spare = batch[:0]
	if len(l.queue) == 0 {
		l.leading = false
		l.qmu.Unlock()
		return
	}
	next := l.queue[0]
	l.qmu.Unlock()
	next.signal(handedLead)
}

// writeBatch chains and stores batch, sets each record's result, and wakes
// every waiter in it but self.
func (l *Log) writeBatch(ctx context.Context, batch []*pending, self *pending) {
	size, last := l.head()
	entries := l.entries[:0]
	for i, p := range batch {
		last = nodeHash(last, p.leaf)
		entries = append(entries, Entry{Seq: size + uint64(i), Data: p.buf[1:], Hash: last})
	}
	err := l.store.Append(ctx, entries)
	clear(entries) // drop references to pooled buffers
	l.entries = entries[:0]

	if err != nil {
		failure := fmt.Errorf("audit: %w: %w", ErrUnavailable, err)
		l.failure.Store(&failure)
		for _, p := range batch {
			p.err = failure
		}
	} else {
		l.headMu.Lock()
		l.size += uint64(len(batch))
		l.last = last
		l.headMu.Unlock()
		if l.failure.Load() != nil {
			l.failure.Store(nil)
		}
		for i, p := range batch {
			p.seq = size + uint64(i)
		}
	}
	for _, p := range batch {
		if p != self {
			p.signal(resultReady)
		}
	}
}
