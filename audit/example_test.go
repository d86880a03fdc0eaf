package audit_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/agentsec/agentsec/audit"
)

func ExampleLog() {
	ctx := context.Background()
	// A fixed clock keeps the output stable; leave Clock nil for time.Now.
	clock := func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) }
	l, err := audit.NewLog(ctx, audit.NewMemoryStore(), audit.Options{Namespace: "shop", Clock: clock})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()

	for _, rec := range []audit.Record{
		{Event: "tool.call", Agent: "agent-7", Tool: "search", Outcome: audit.OutcomeAllowed, Tokens: 120},
		{Event: "tool.call", Agent: "agent-9", Tool: "refund", Outcome: audit.OutcomeDenied, Reason: "needs privileged, has verified"},
	} {
		if _, err := l.Log(ctx, rec); err != nil {
			// Fail closed: a call whose record can't be kept is denied.
			log.Fatal(err)
		}
	}

	page, err := l.Query(ctx, audit.Filter{Outcome: audit.OutcomeDenied})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range page.Records {
		fmt.Printf("#%d %s %s %s %s: %s\n", r.Seq, r.Time.Format(time.RFC3339), r.Namespace, r.Agent, r.Tool, r.Reason)
	}

	n, err := l.Verify(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("verified", n, "records")
	// Output:
	// #1 2025-01-02T03:04:05Z shop agent-9 refund: needs privileged, has verified
	// verified 2 records
}

func ExampleEncodeRecord() {
	rec := audit.Record{
		Time:    time.Date(2025, 1, 2, 4, 4, 5, 0, time.FixedZone("CET", 3600)),
		Event:   "tool.call",
		Tool:    "search",
		Agent:   "agent-7",
		Outcome: audit.OutcomeAllowed,
		Attrs:   map[string]string{"query": "shoes \"red\"", "lang": "en"},
	}
	b, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))
	// Output:
	// {"agent":"agent-7","attrs":{"lang":"en","query":"shoes \"red\""},"event":"tool.call","outcome":"allow","time":"2025-01-02T03:04:05.000000000Z","tool":"search"}
}

// A signed log can be checked by anyone holding only its verifier key.
func Example_signedLog() {
	ctx := context.Background()
	// Keep the signer key secret; give the verifier key to whoever checks
	// the log.
	skey, vkey, err := audit.GenerateKey("example.com/audit")
	if err != nil {
		log.Fatal(err)
	}
	signer, verifier, err := audit.NewSigner(skey)
	if err != nil {
		log.Fatal(err)
	}
	store := audit.NewMemoryStore()
	l, err := audit.NewLog(ctx, store, audit.Options{Signer: signer, Verifier: verifier, CheckpointEvery: 2})
	if err != nil {
		log.Fatal(err)
	}
	for _, agent := range []string{"agent-1", "agent-2", "agent-3"} {
		if _, err := l.Log(ctx, audit.Record{Event: "tool.call", Agent: agent}); err != nil {
			log.Fatal(err)
		}
	}
	// Sign the log as it is now, and keep a copy away from the store: it
	// catches a log later truncated or rewritten with its checkpoints.
	kept, err := l.Checkpoint(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := l.Close(); err != nil {
		log.Fatal(err)
	}

	// An outsider verifies the whole log, and a proof of one record.
	v, err := audit.NewVerifier(vkey)
	if err != nil {
		log.Fatal(err)
	}
	res, err := audit.Verify(ctx, store, audit.VerifyOptions{Verifier: v, Trusted: [][]byte{kept}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("verified %d records against %d signed checkpoints\n", res.Records, res.Checkpoints)

	proof, err := audit.ProveInclusion(ctx, store, 1, kept)
	if err != nil {
		log.Fatal(err)
	}
	text, err := proof.MarshalText() // what `agentsec audit prove` writes
	if err != nil {
		log.Fatal(err)
	}
	var received audit.InclusionProof
	if err := received.UnmarshalText(text); err != nil {
		log.Fatal(err)
	}
	rec, cp, err := audit.CheckInclusion(&received, v)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("record %d (%s) is in the log of %d records\n", rec.Seq, rec.Agent, cp.Size)
	// Output:
	// verified 3 records against 3 signed checkpoints
	// record 1 (agent-2) is in the log of 3 records
}

func ExampleCheckpoint_Text() {
	cp := audit.Checkpoint{Origin: "example.com/audit", Size: 3}
	fmt.Print(string(cp.Text()))
	// Output:
	// example.com/audit
	// 3
	// AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
}
