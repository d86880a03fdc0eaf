package audit

import (
	"context"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Appends are group-committed. A caller whose record is encoded and
// hashed joins a queue; if no one is committing, it becomes the leader:
// it takes the queue (up to MaxBatch records), extends the Merkle tree,
// writes the batch with one Store.Append, and wakes the others with their
// results. If more records
// queued meanwhile, it hands leadership to the first of them and returns,
// so no caller commits for others indefinitely. Without contention every
// caller is its own leader and never waits; under contention the store
// sees one Append, and for a durable store one sync, per batch.

// A pending record waits in the queue. pendings are pooled, with their
// buffers, so an append allocates nothing.
type pending struct {
	buf []byte // 0x00 || record bytes
	rec Record // the record buf encodes
	// arrived is when Log was called, as the log's clock read it: with
	// time.Now's monotonic reading, which rec.Time, in UTC, drops.
	arrived time.Time
	leaf    Hash
	seq     uint64
	err     error
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
// between, before it blocks. Only the first waiters of a queue spin, as
// many as can run at once (GOMAXPROCS): more would take the processors
// from the work they wait for — the leader's, or a database server's on
// the same machine — and a long queue waits long anyway.
const spinChecks = 64

// wait returns p's new state once it is signalled, spinning first if
// spin is set.
func (p *pending) wait(spin bool) uint32 {
	if !spin {
		<-p.done
		return p.state.Load()
	}
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
	p.err, p.rec, p.arrived = nil, Record{}, time.Time{}
	p.state.Store(waiting)
	if cap(p.buf) > 4<<10 {
		p.buf = make([]byte, 0, 512) // don't pool the rare huge record's buffer
	}
	pendingPool.Put(p)
}

// gatherBusy is how many records make a log busy, for a store that
// gathers (GatheringStore): a leader waits the store's GatherAppends for
// more records to join its batch when its queue holds that many, or when
// the last batch did. The second catches a closed loop of callers, whose
// batch answers them all at once: their next records come back one by
// one, and the first of them would otherwise lead a batch of its own, one
// sync for one record, before the rest gather behind it (bench/gateway
// counted about half the syncs at 64 callers in batches of 1 to 3). At a
// light load the queue holds the leader's record alone, or another, and
// waiting would only delay them. (A variant that gathered from 2, for as
// long as the last batch took, raised bench/gateway's price of durability
// at p90 at 500 calls/s from about 3 syncs to 5.)
const gatherBusy = 4

// MaxBatch bounds the records one Store.Append from a Log receives, and
// so the size of one transaction or statement, or of one write of a
// store's own log.
const MaxBatch = 512

// committer is the group-commit state of a Log.
type committer struct {
	qmu      sync.Mutex
	queue    []*pending
	leading  bool // someone is committing or has been handed leadership
	spinners int  // how many of the queue's first waiters spin: GOMAXPROCS when the Log opened

	lastBatch int // how many records the last batch held

	// Owned by the leader of the moment.
	spare   []*pending
	entries []Entry
	hashes  []Hash
}

// commit returns once p is stored or has failed, with p.seq or p.err set.
func (l *Log) commit(ctx context.Context, p *pending) {
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	if l.leading {
		spin := len(l.queue) <= l.spinners
		next := len(l.queue) == 1 // the first of the next batch, and its leader
		l.qmu.Unlock()
		if next && l.forecaster != nil {
			l.forecaster.AppendComing()
		}
		if p.wait(spin) == resultReady {
			return
		}
		p.state.Store(waiting)
		l.qmu.Lock()
	}
	l.leading = true
	if l.gatherer != nil && (len(l.queue) >= gatherBusy || l.lastBatch >= gatherBusy) {
		// A busy log waits for more records to join the batch: one sync
		// for all of them.
		if wait := l.gatherer.GatherAppends(); wait > 0 {
			l.qmu.Unlock()
			time.Sleep(wait)
			l.qmu.Lock()
		}
	}
	// The leader's own record is first in the queue: a new leader found
	// the queue empty, and leadership is handed to the first in line.
	n := min(len(l.queue), MaxBatch)
	batch := l.queue[:n:n]
	l.queue = append(l.spare[:0], l.queue[n:]...)
	l.qmu.Unlock()

	// Records others are waiting for must not be lost to this caller
	// cancelling its context.
	if ctx.Done() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	l.writeBatch(ctx, batch, p)

	l.qmu.Lock()
	l.lastBatch = len(batch)
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

// writeBatch extends the tree by batch and stores it, sets each record's
// result, wakes every waiter in it but self, and signs a checkpoint if one
// is due.
func (l *Log) writeBatch(ctx context.Context, batch []*pending, self *pending) {
	l.headMu.Lock()
	size := l.size
	l.headMu.Unlock()

	// The batch extends the leader's working frontier; touched notes the
	// levels it changes, to publish or roll back.
	var (
		touched uint64
		entries []Entry
		err     error
	)
	if l.shared != nil {
		size, entries, touched, err = l.appendShared(ctx, batch, size)
	} else {
		entries, touched = l.buildEntries(batch, size)
		err = l.store.Append(ctx, entries)
	}
	if err != nil && entries != nil && l.landed(ctx, entries) {
		// The store failed to say so, but the batch is stored.
		err = nil
	}
	clear(entries) // drop references to pooled buffers
	l.entries, l.hashes = entries[:0], l.hashes[:0]

	if err != nil {
		failure := l.fail(err)
		for _, p := range batch {
			p.err = failure
		}
		copyLevels(&l.work, &l.front, touched)
	} else {
		newSize := size + uint64(len(batch))
		l.headMu.Lock()
		l.size = newSize
		copyLevels(&l.front, &l.work, touched)
		l.headMu.Unlock()
		if l.failure.Load() != nil {
			l.failure.Store(nil)
			l.appendHealth.recovered(l)
		}
		for i, p := range batch {
			p.seq = size + uint64(i)
		}
	}
	if f := l.appendObserver.Load(); f != nil {
		// The first record's time was read as its Log began: the batch
		// took this long as its first caller saw it.
		(*f)(len(batch), l.since(batch[0].arrived), err)
	}
	for _, p := range batch {
		if p != self {
			p.signal(resultReady)
		}
	}
	if err == nil && l.checkpointDue(len(batch)) {
		// A failure marks the log failed until a checkpoint is stored;
		// the records themselves are stored.
		_ = l.checkpoint(ctx)
	}
}

// appendShared appends batch to the shared store, from the size this
// log last appended up to, or from the store's size if other logs
// appended since; it returns the size the batch went in at, its entries,
// the frontier levels it changed, and the store's error. (Apart from
// writeBatch, so that the variables its callback sets are not moved to
// the heap for the other stores' appends too.)
func (l *Log) appendShared(ctx context.Context, batch []*pending, size uint64) (uint64, []Entry, uint64, error) {
	var (
		touched uint64
		entries []Entry
	)
	err := l.shared.AppendShared(ctx, func(at uint64, read HashReader) ([]Entry, error) {
		switch {
		case at < size:
			return nil, fmt.Errorf("the shared log holds %d records, but this log appended up to %d: records are missing; run agentsec audit verify", at, size)
		case at > size:
			// Other logs appended: continue the tree they left.
			if err := l.work.load(at, read); err != nil {
				return nil, fmt.Errorf("reading the log's head at size %d: %w", at, err)
			}
			size, touched = at, ^uint64(0)
		}
		var t uint64
		entries, t = l.buildEntries(batch, size)
		touched |= t
		return entries, nil
	})
	return size, entries, touched, err
}

// buildEntries extends the working frontier by batch, from size, and
// returns the batch's entries and the frontier levels it changed.
func (l *Log) buildEntries(batch []*pending, size uint64) ([]Entry, uint64) {
	var touched uint64
	hashes := l.hashes[:0]
	entries := l.entries[:0]
	for i, p := range batch {
		start := len(hashes)
		n := size + uint64(i)
		touched |= 1 << bits.TrailingZeros64(^n)
		hashes = l.work.appendLeaf(hashes, n, p.leaf)
		entries = append(entries, Entry{Seq: n, Data: p.buf[1:],
			Hashes: hashes[start:len(hashes):len(hashes)], Record: &p.rec})
	}
	l.hashes = hashes
	return entries, touched
}

// landed reports whether a batch whose Append failed is in the store after
// all, as when a commit succeeds but its acknowledgement is lost. Without
// this check the log would stay behind the store and fail every append
// after.
func (l *Log) landed(ctx context.Context, entries []Entry) bool {
	first := entries[0].Seq
	size, err := l.store.Size(ctx)
	if err != nil || size < first+uint64(len(entries)) {
		// (A shared store may have grown past the batch since.)
		return false
	}
	indexes := make([]int64, len(entries))
	for i, e := range entries {
		indexes[i] = tlog.StoredHashIndex(0, int64(e.Seq))
	}
	stored, err := l.store.ReadHashes(ctx, indexes)
	if err != nil {
		return false
	}
	for i, e := range entries {
		if stored[i] != e.Hashes[0] {
			return false
		}
	}
	return true
}

// copyLevels copies the frontier levels set in mask from src to dst.
func copyLevels(dst, src *frontier, mask uint64) {
	for mask != 0 {
		k := bits.TrailingZeros64(mask)
		dst[k] = src[k]
		mask &^= 1 << k
	}
}
