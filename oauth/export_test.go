package oauth

// ForgetVerified empties v's memory of verified tokens, so that the next
// Verify checks the signature.
func ForgetVerified(v *Verifier) {
	v.cache.mu.Lock()
	defer v.cache.mu.Unlock()
	clear(v.cache.entries)
}

// KeyGeneration is the generation of the keys v holds for the issuer at
// url: tokens checked under an older one are checked again.
func KeyGeneration(v *Verifier, url string) uint64 {
	gen, _ := v.byURL[url].keys.current()
	return gen
}

// Scopes is scopes, for tests.
func Scopes(c map[string]any) []string { return scopes(c) }
