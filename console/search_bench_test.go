package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/audittest"
	"github.com/agentsec/agentsec/store/sqlite"
)

// BenchmarkConsoleAuditSearch asks the console for one session's page of
// records (100 of them, rendered) in a 1,000,000-record SQLite log of
// 10,000 sessions, through HTTP with a signed-in operator's cookie, and
// the same query of the store directly, alternately, in the same run. It
// reports each one's median latency and their ratio. The goal is a median
// of 50 ms through the console.
func BenchmarkConsoleAuditSearch(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a 1,000,000-record log first; run without -short")
	}
	const n, sessions = 1_000_000, 10_000
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "audit.db"), sqlite.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	audittest.Fill(b, st, n, sessions, "console")
	key, _, err := audit.GenerateKey("console")
	if err != nil {
		b.Fatal(err)
	}
	_, srv := consoleOver(b, st, key)
	client := newBrowser(b, srv)
	client.login(viewerToken)
	var viaConsole, direct []time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		session := fmt.Sprintf("session-%d", (i*7)%sessions)
		i++
		t0 := time.Now()
		page, err := audit.Query(ctx, st, audit.Filter{Session: session, Limit: 100})
		if err != nil || len(page.Records) != 100 {
			b.Fatal(len(page.Records), err)
		}
		direct = append(direct, time.Since(t0))
		t0 = time.Now()
		resp, err := client.c.Get(srv.URL + "/audit?session=" + session)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || len(body) < 10_000 {
			b.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
		}
		viaConsole = append(viaConsole, time.Since(t0))
	}
	b.StopTimer()
	c, d := audittest.Median(viaConsole), audittest.Median(direct)
	b.ReportMetric(float64(c.Microseconds())/1000, "console-p50-ms")
	b.ReportMetric(float64(d.Microseconds())/1000, "query-p50-ms")
	b.ReportMetric(float64(c)/float64(d), "console/query")
}
