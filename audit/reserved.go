package audit

import "strings"

// reservedEventPrefixes are the prefixes of the events agentsec records
// itself: its decisions, budget and trust changes, reloads, sign-ins and
// refusals, sessions, health.
var reservedEventPrefixes = []string{"tool.", "trust.", "budget.", "health.", "agentsec.",
	"config.", "agent.", "operator.", "session.", "auth.", "console."}

// reservedAttrs are the attributes agentsec sets on records itself.
var reservedAttrs = map[string]bool{
	"source": true, "operator": true, "operator_id": true, "role": true,
	"withheld_tokens": true, "budget_error": true, "reservation": true, "expires": true,
	"previous": true, "config": true, "configured": true, "change_id": true,
	"signature": true, "reload": true, "task": true, "token_sha256": true, "changes": true,
	"change": true, "value": true, "levels": true,
}

// ReservedEvent reports whether event, in any case, is one agentsec
// records itself, which a client — an agent or an operator writing an
// event of its own — must not pass off as agentsec's.
func ReservedEvent(event string) bool {
	e := strings.ToLower(event)
	for _, p := range reservedEventPrefixes {
		if strings.HasPrefix(e, p) {
			return true
		}
	}
	return false
}

// ReservedAttr reports whether name, in any case, is an attribute
// agentsec sets on records itself — who wrote a record, the budget's and
// the trust changes' bookkeeping, their signatures, an OAuth identity
// ("oauth_" and anything after) — which a client must not set, on its own
// events or on the records of its calls.
func ReservedAttr(name string) bool {
	n := strings.ToLower(name)
	return reservedAttrs[n] || strings.HasPrefix(n, "oauth_")
}
