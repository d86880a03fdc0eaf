package mcpgate

// Hooks into the gateway's front and listener for the tests of
// package mcpgate_test.

// AdmitRequest is admitRequest.
var AdmitRequest = admitRequest

// Counts returns the connections l holds open, and how many addresses
// they come from.
func (l *LimitedListener) Counts() (open, addresses int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, len(l.byAddr)
}

// AddressKey is addressKey.
var AddressKey = addressKey
