package httpapi

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Bounds on remembered idempotency keys.
const (
	idempotencyTTL = 24 * time.Hour
	// maxKeysPerCaller and maxKeyBytesPerCaller bound what one caller has
	// remembered: its oldest keys are forgotten first.
	maxKeysPerCaller     = 10_000
	maxKeyBytesPerCaller = 8 << 20
)

// idempotency remembers, by caller, route and Idempotency-Key, the answer
// to a request that changed something, so that a retry has the effect of
// one.
type idempotency struct {
	mu      sync.Mutex
	byKey   map[string]*replay
	callers map[string]*keysOf
}

// keysOf is one caller's keys, oldest first, and their size.
type keysOf struct {
	keys  []queued
	bytes int
}

// queued is one of a caller's remembered keys.
type queued struct {
	key string
	r   *replay
}

// A replay is one remembered request: running until done is closed, then
// its answer, encoded.
type replay struct {
	authority string   // of the caller's token (principal.authority)
	sum       [32]byte // of the body
	done      chan struct{}
	answer    answer // encoded (its body an encodedBody)
	expires   time.Time
}

func newIdempotency() *idempotency {
	return &idempotency{byKey: map[string]*replay{}, callers: map[string]*keysOf{}}
}

// do answers the request of caller with key, whose body hashes to sum: by
// running h the first time, and with h's answer again for a retry. A retry
// with another body, or while the first is running, is a conflict; so is
// one from a token of the caller's with another authority (authority).
//
// An answer that says to try again later — a 5xx, rate_limited — is not
// remembered: the retry runs again. One that carries a resume (a change
// made but not recorded) is remembered with it, and the retry runs the
// resume, which records what was done, instead of doing it again.
func (m *idempotency) do(caller, key, authority string, sum [32]byte, h func() answer) (answer, bool) {
	now := time.Now()
	m.mu.Lock()
	if r, found := m.byKey[key]; found && now.Before(r.expires) {
		if r.sum != sum {
			m.mu.Unlock()
			return fail(http.StatusUnprocessableEntity, CodeConflict, "this Idempotency-Key was used with another body"), false
		}
		select {
		case <-r.done:
		default:
			m.mu.Unlock()
			a := conflict("a request with this Idempotency-Key is still running; retry with the same key")
			a.body.(*problem).headers = []headerValue{{"Retry-After", "1"}}
			return a, false
		}
		if r.answer.resume == nil {
			m.mu.Unlock()
			if r.authority != authority {
				// Another of the caller's tokens, of other scopes or
				// role: it is told nothing of what the first was
				// allowed, and nothing runs twice. (A resume runs for
				// any: it records what was done.)
				return fail(http.StatusUnprocessableEntity, CodeConflict, "this Idempotency-Key was used by another token of this caller's, of other scopes or role"), false
			}
			return r.answer, true
		}
		h = r.answer.resume
	}
	r := &replay{authority: authority, sum: sum, done: make(chan struct{}), expires: now.Add(idempotencyTTL)}
	m.byKey[key] = r
	m.mu.Unlock()

	a := h()
	keep := a.resume != nil || (a.status < 500 && !isRateLimited(a))
	enc := encode(a)
	m.mu.Lock()
	defer m.mu.Unlock()
	r.answer = enc
	close(r.done)
	if !keep {
		if m.byKey[key] == r {
			delete(m.byKey, key)
		}
		return a, false
	}
	c := m.callers[caller]
	if c == nil {
		c = &keysOf{}
		m.callers[caller] = c
	}
	c.keys = append(c.keys, queued{key, r})
	c.bytes += len(key) + r.size()
	for len(c.keys) > 0 && (len(c.keys) > maxKeysPerCaller || c.bytes > maxKeyBytesPerCaller || now.After(c.keys[0].r.expires)) {
		old := c.keys[0]
		if m.byKey[old.key] == old.r {
			delete(m.byKey, old.key)
		}
		c.bytes -= len(old.key) + old.r.size()
		c.keys = c.keys[1:]
	}
	return a, false
}

func (r *replay) size() int {
	if e, ok := r.answer.body.(encodedBody); ok {
		return len(e.data)
	}
	return 0
}

func isRateLimited(a answer) bool {
	p, ok := a.body.(*problem)
	return ok && p.Code == CodeRateLimited
}

// An encodedBody is an answer's body encoded, as the idempotency cache
// keeps it: a few hundred bytes rather than the values behind them.
type encodedBody struct {
	data    []byte
	problem bool
}

// encode returns a with its body encoded.
func encode(a answer) answer {
	_, isProblem := a.body.(*problem)
	data, err := json.Marshal(a.body)
	if err != nil {
		return a
	}
	return answer{status: a.status, body: encodedBody{data: append(data, '\n'), problem: isProblem}, resume: a.resume}
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
