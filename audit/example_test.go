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
