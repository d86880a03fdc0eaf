// Package adversarial is agentsec's hostile-client test suite: its tests
// drive the MCP gateway (mcpgate.Proxy over stdio, mcpgate.Gateway over
// HTTP) the way the party it governs might — an agent with a valid token
// that cancels, retries, races, smuggles messages, floods sessions and
// reuses ids; a network peer with no token — in front of deliberately
// naive upstream servers that run whatever reaches them. After each
// attack the suite checks the gateway's promises from outside:
//
//   - what the upstream really executed is within the session's limits;
//   - every execution is recorded in the audit log;
//   - the log verifies;
//   - other clients are still served.
//
// The package holds no code of its own beyond this comment; its tests run
// with the rest (go test ./...). docs/design.md ("Threat model") maps
// each attacker to the tests here.
package adversarial
