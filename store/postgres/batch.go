package postgres

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Budget changes made at once are sent together: one statement, one
// commit. Each change must be committed before its caller goes on — a
// reservation before its call goes to the upstream — and a commit waits
// for the server's WAL to reach disk, so one commit per change would make
// that wait, and the server's work around it, the limit on a replica's
// calls per second. While fewer than maxBatchesSending operations are on
// their way, a caller goes out at once, on its own statement; callers
// that come meanwhile wait, and go out together when one comes back.
// Reservations have one on its way, not two: those that wait also ride
// the audit log's appends to the same database (riders.go), which take
// the second one's place, and the others wait for no disk of their own.
const (
	maxBatchesSending      = 2
	maxReservationsSending = 1
	maxBatch               = 256
	// batchTimeout bounds an operation or batch on its way: callers queue
	// behind it, and a database that doesn't answer must fail their
	// calls, not hold them.
	batchTimeout = 15 * time.Second
)

// A batcher groups its callers' operations of one kind into batches.
type batcher[Op, R any] struct {
	// one does a lone operation.
	one func(context.Context, Op) R
	// many does a batch of two or more, one answer for each.
	many func(context.Context, []Op) []R
	// abandoned, if set, is told of each operation done for a caller that
	// had given up waiting, once the others have their answers.
	abandoned func(context.Context, Op, R)
	// sendingMax is how many operations and batches may be on their way
	// before callers queue: maxBatchesSending, or more in the benchmarks'
	// unbatched baseline, set before the batcher is used.
	sendingMax int

	mu       sync.Mutex
	queue    []*pending[Op, R] // waiting for a batch
	sending  int               // operations and batches on their way
	carriers int               // carriers boarding (board): each takes the queue before it commits
}

// A pending operation waits for its batch.
type pending[Op, R any] struct {
	op   Op
	done chan struct{} // closed once r is set
	r    R

	// Guarded by the batcher's mu.
	sent      bool // on its way: alone, in a batch, or with a carrier
	abandoned bool // its caller gave up
}

// do does op: at once, on its own statement, if fewer than b.sendingMax
// operations are on their way and no carrier is boarding — the queue is
// then empty — or else in the next batch, or with the carrier. If ctx
// ends while op is queued, do returns ctx's error and op is never done.
// Once op is on its way, a batcher with b.abandoned gives up with its
// caller: do returns ctx's error at once and tells b.abandoned of op's
// answer when it comes — a lone op's statement is not cancelled, so that
// what it did is known and can be undone. A batcher without b.abandoned
// waits for the answer.
func (b *batcher[Op, R]) do(ctx context.Context, op Op) (R, error) {
	b.mu.Lock()
	if b.sending < b.sendingMax && b.carriers == 0 {
		b.sending++
		if b.abandoned != nil {
			// A batch of one, sent at once.
			p := &pending[Op, R]{op: op, done: make(chan struct{}), sent: true}
			b.mu.Unlock()
			go func() {
				gaveUp := b.send([]*pending[Op, R]{p})
				b.sendQueued()
				b.tellAbandoned(gaveUp)
			}()
			return b.wait(ctx, p)
		}
		b.mu.Unlock()
		defer b.sendQueued()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchTimeout)
		defer cancel()
		return b.one(ctx, op), nil
	}
	p := &pending[Op, R]{op: op, done: make(chan struct{})}
	b.queue = append(b.queue, p)
	b.mu.Unlock()
	return b.wait(ctx, p)
}

// wait waits for p's answer, or for ctx to end while p is queued, or
// while it is on its way in a batcher with b.abandoned.
func (b *batcher[Op, R]) wait(ctx context.Context, p *pending[Op, R]) (R, error) {
	select {
	case <-p.done:
		return p.r, nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-p.done:
		b.mu.Unlock()
		return p.r, nil
	default:
	}
	switch {
	case !p.sent:
		b.queue = slices.DeleteFunc(b.queue, func(q *pending[Op, R]) bool { return q == p })
	case b.abandoned != nil:
		p.abandoned = true
	default:
		b.mu.Unlock()
		<-p.done // within batchTimeout
		return p.r, nil
	}
	b.mu.Unlock()
	var zero R
	return zero, ctx.Err()
}

// sendQueued is called by a sender that is done: it hands its turn to a
// goroutine that sends the operations queued meanwhile, or ends it.
func (b *batcher[Op, R]) sendQueued() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sending--
	b.kick()
}

// kick sends the queue, in a goroutine of its own, if no one else will:
// fewer than b.sendingMax operations are on their way, and no carrier is
// boarding. b.mu is held.
func (b *batcher[Op, R]) kick() {
	if len(b.queue) == 0 || b.sending >= b.sendingMax || b.carriers > 0 {
		return
	}
	b.sending++
	batch := b.dequeue()
	go func() {
		gaveUp := b.send(batch)
		b.sendQueued()
		b.tellAbandoned(gaveUp)
	}()
}

// send does a batch, gives each caller its answer, and returns the
// operations whose callers had given up.
func (b *batcher[Op, R]) send(batch []*pending[Op, R]) (gaveUp []*pending[Op, R]) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	var rs []R
	if len(batch) == 1 {
		rs = []R{b.one(ctx, batch[0].op)}
	} else {
		ops := make([]Op, len(batch))
		for i, p := range batch {
			ops[i] = p.op
		}
		rs = b.many(ctx, ops)
	}
	return b.deliver(batch, rs)
}

// dequeue takes the first maxBatch operations of the queue, marked sent.
// b.mu is held.
func (b *batcher[Op, R]) dequeue() []*pending[Op, R] {
	n := min(len(b.queue), maxBatch)
	if n == 0 {
		return nil
	}
	batch := slices.Clone(b.queue[:n])
	b.queue = slices.Delete(b.queue, 0, n)
	for _, p := range batch {
		p.sent = true
	}
	return batch
}

// deliver gives each operation of a batch its answer, and returns those
// whose callers had given up.
func (b *batcher[Op, R]) deliver(batch []*pending[Op, R], rs []R) (gaveUp []*pending[Op, R]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range batch {
		p.r = rs[i]
		if p.abandoned {
			gaveUp = append(gaveUp, p)
		}
		close(p.done)
	}
	return gaveUp
}

// tellAbandoned tells b.abandoned of the operations done for callers
// that had given up.
func (b *batcher[Op, R]) tellAbandoned(gaveUp []*pending[Op, R]) {
	if len(gaveUp) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	for _, p := range gaveUp {
		b.abandoned(ctx, p.op, p.r)
	}
}

// Carriers. A transaction of another kind that is about to commit anyway
// — an audit append, in the same database — can carry the queued
// operations: its commit makes them durable, and their own commit and
// its wait for the disk are saved. A carrier boards once it knows it
// will commit soon, and then takes the queue, or alights without it;
// while one is boarding, callers queue for it rather than go out on
// their own. The carrier does the operations it took, and gives them
// their answers with deliver and tellAbandoned, as a sender does.

// board tells b that a carrier will take its queue before it commits.
func (b *batcher[Op, R]) board() {
	b.mu.Lock()
	b.carriers++
	b.mu.Unlock()
}

// take ends a carrier's boarding: it returns the first maxBatch queued
// operations, marked sent, for the carrier to do.
func (b *batcher[Op, R]) take() []*pending[Op, R] {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.carriers--
	batch := b.dequeue()
	b.kick() // the operations beyond maxBatch
	return batch
}

// alight ends a carrier's boarding without the queue, which goes out on
// its own.
func (b *batcher[Op, R]) alight() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.carriers--
	b.kick()
}
