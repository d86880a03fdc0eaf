package oauth

// ForgetVerified empties v's memory of verified tokens, so that the next
// Verify checks the signature.
func ForgetVerified(v *Verifier) {
	v.cache.mu.Lock()
	defer v.cache.mu.Unlock()
	clear(v.cache.entries)
}
