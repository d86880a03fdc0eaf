package httpapi

import (
	"strings"
	"sync"
	"time"
)

// Bounds on remembered idempotency keys.
const (
	idempotencyTTL = 24 * time.Hour
	// maxKeysPerCaller bounds the keys one caller has remembered: its
	// oldest are forgotten first.
	maxKeysPerCaller = 10_000
)

// idempotency remembers, by caller, route and Idempotency-Key, the answer
// to a request that changed something, so that a retry has the effect of
// one.
type idempotency struct {
	mu     sync.Mutex
	byKey  map[string]*replay
	queues map[string][]queued // each caller's keys, oldest first
}

// queued is one of a caller's remembered keys.
type queued struct {
	key string
	r   *replay
}

// A replay is one remembered request.
type replay struct {
	sum     [32]byte // of the body
	done    chan struct{}
	answer  answer
	expires time.Time
}

func newIdempotency() *idempotency {
	return &idempotency{byKey: map[string]*replay{}, queues: map[string][]queued{}}
}

// do answers the request of key, whose body hashes to sum: by running h
// the first time, and with h's answer again for a retry. A retry with
// another body, or while the first is running, is a conflict. An answer
// that says to try again (a 5xx) is not remembered: the retry runs.
func (m *idempotency) do(key string, sum [32]byte, h func() answer) (answer, bool) {
	caller, _, _ := strings.Cut(key, "\x00")
	now := time.Now()
	m.mu.Lock()
	if r, found := m.byKey[key]; found && now.Before(r.expires) {
		m.mu.Unlock()
		if r.sum != sum {
			return fail(422, CodeConflict, "this Idempotency-Key was used with another body"), false
		}
		select {
		case <-r.done:
			return r.answer, true
		default:
			return conflict("a request with this Idempotency-Key is still running"), false
		}
	}
	r := &replay{sum: sum, done: make(chan struct{}), expires: now.Add(idempotencyTTL)}
	m.byKey[key] = r
	q := append(m.queues[caller], queued{key, r})
	for len(q) > maxKeysPerCaller || now.After(q[0].r.expires) {
		if m.byKey[q[0].key] == q[0].r {
			delete(m.byKey, q[0].key)
		}
		q = q[1:]
	}
	m.queues[caller] = q
	m.mu.Unlock()

	a := h()
	if a.status >= 500 {
		m.mu.Lock()
		if m.byKey[key] == r {
			delete(m.byKey, key)
		}
		m.mu.Unlock()
	}
	r.answer = a
	close(r.done)
	return a, false
}

// validIdempotencyKey reports whether k is 1 to 255 printable ASCII
// characters.
func validIdempotencyKey(k string) bool {
	if len(k) == 0 || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}
