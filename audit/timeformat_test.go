package audit

import (
	"math/rand/v2"
	"testing"
	"time"
)

// appendTime is a hand-written formatter; it must agree with the time
// package's own formatting of timeLayout everywhere in years 0 to 9999.
func TestAppendTimeMatchesTimeFormat(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("east", 5*3600+1800), time.FixedZone("west", -11*3600)}
	times := []time.Time{
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2024, 2, 29, 12, 0, 0, 1, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 100, time.UTC),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		sec := rng.Int64N(253402300800) - 62135596800 // years 0001 to 9999
		times = append(times, time.Unix(sec, rng.Int64N(1e9)))
	}
	for i, tm := range times {
		tm = tm.In(zones[i%len(zones)])
		if tm.UTC().Year() > 9999 {
			continue
		}
		got := string(appendTime(nil, tm))
		want := `"` + tm.UTC().Format(timeLayout) + `"`
		if got != want {
			t.Fatalf("appendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}
