package oauth

import (
	"sync"
	"time"
)

// maxVerified bounds the tokens remembered as verified.
const maxVerified = 10_000

// verified remembers the tokens that passed, by their SHA-256, so that a
// client presenting the same token on each request pays for one
// signature check, not one per request. An entry holds only while the
// token has not expired and the keys it was checked against are still
// the ones in hand and usable: a key set fetched since (a key withdrawn),
// or keys past KeysMaxAge, make the token be checked again. Only tokens
// that passed every check are remembered; a refusal always runs the full
// check.
type verified struct {
	mu      sync.Mutex
	entries map[[32]byte]verifiedToken
}

type verifiedToken struct {
	id      Identity
	expires time.Time // exp plus the clock skew, or sooner
	issuer  *issuer   // whose keys it was checked against
	gen     uint64    // their generation then
	opaque  bool      // checked by the issuer alone: no keys of ours
}

// get returns the entry of an unexpired token; the caller checks its
// keys' generation.
func (vt *verified) get(sum [32]byte, now time.Time) (verifiedToken, bool) {
	vt.mu.Lock()
	defer vt.mu.Unlock()
	e, ok := vt.entries[sum]
	if ok && !now.Before(e.expires) {
		delete(vt.entries, sum)
		return verifiedToken{}, false
	}
	return e, ok
}

// forget drops a token's entry.
func (vt *verified) forget(sum [32]byte) {
	vt.mu.Lock()
	defer vt.mu.Unlock()
	delete(vt.entries, sum)
}

func (vt *verified) put(sum [32]byte, e verifiedToken) {
	vt.mu.Lock()
	defer vt.mu.Unlock()
	if vt.entries == nil {
		vt.entries = map[[32]byte]verifiedToken{}
	}
	if len(vt.entries) >= maxVerified {
		// Full: forget an arbitrary tenth, which costs those tokens one
		// more signature check each.
		n := 0
		for k := range vt.entries {
			delete(vt.entries, k)
			if n++; n >= maxVerified/10 {
				break
			}
		}
	}
	vt.entries[sum] = e
}
