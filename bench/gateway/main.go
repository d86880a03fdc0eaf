//go:build linux

// Command gateway measures what the agentsec gateway adds to a tools/call
// over streamable HTTP, against the physical floors under it, measured
// side by side in the same run:
//
//   - direct: the client calls the MCP server itself;
//   - proxy: through a bare httputil.ReverseProxy, the floor of any HTTP
//     hop;
//   - gateway on tmpfs: through `agentsec serve` with its durable audit
//     log on tmpfs, where a sync costs nothing: governance without the
//     disk;
//   - gateway on disk: the same with the log on the disk, as in
//     production;
//   - fdatasync: a small write and fdatasync on the log's disk, the floor
//     under any durable append.
//
// Each round measures every path, and the fdatasync probe, at a fixed
// offered rate, taking turns in slices of half a second (-slice) until
// each has had its time, so that noise that comes and goes over seconds
// falls on all alike; then every path at saturation. The probe runs
// twice: alone, on an otherwise idle machine, as the ratios
// have it, and beside the gateway on tmpfs at the same rate, where a
// sync waits for processors busy with the client, the server and the
// gateway, as the gateway's own syncs do. The paths' order
// rotates from round to round, so that no path always runs first or
// last. The ratios are computed within each round, and their
// medians over the rounds are the result: on a shared, noisy machine a
// ratio of two figures measured a second apart means more than either.
//
// Then, unless -count-calls is 0 or strace is missing, a third gateway
// runs under strace, which sees only its calls that may sync a file —
// fdatasync, fsync, and the record log's pwritev2 with RWF_DSYNC — and
// the syncs per governed call are counted with one caller and with
// -clients callers.
//
// Four processes, as in production, all on loopback: this one is the
// client (the Go SDK's), children of it are the MCP server (the Go
// SDK's) and the bare proxy, and the gateways are the real agentsec
// binary, built from this checkout and run with a configuration file.
//
// It runs on Linux: it reads /proc, and uses tmpfs and strace.
//
//	go run ./bench/gateway                       # 11 rounds of 3 s per path and load
//	go run ./bench/gateway -rounds 3 -duration 1s
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func main() {
	rounds := flag.Int("rounds", 11, "rounds of measurements")
	duration := flag.Duration("duration", 3*time.Second, "how long each path is measured, per round and load")
	slice := flag.Duration("slice", 500*time.Millisecond, "at the fixed rate, the paths take turns for this long each, until each has had -duration")
	rate := flag.Int("rate", 500, "the fixed offered rate, in calls per second")
	sessions := flag.Int("sessions", 16, "client sessions per path; calls are spread over them")
	clients := flag.Int("clients", 64, "concurrent callers at saturation")
	diskDir := flag.String("disk", os.TempDir(), "a `directory` on the disk the durable log is measured on")
	tmpfsDir := flag.String("tmpfs", "/dev/shm", "a `directory` on tmpfs")
	countCalls := flag.Int("count-calls", 3000, "calls per phase when counting syncs under strace; 0 skips counting")
	upstream := flag.Bool("upstream", false, "serve the no-op MCP server and print its URL (the benchmark's child)")
	proxyTo := flag.String("proxy", "", "serve a bare reverse proxy to this `URL` and print its URL (the benchmark's child)")
	flag.Parse()
	switch {
	case *upstream:
		serveUpstream()
		return
	case *proxyTo != "":
		serveProxy(*proxyTo)
		return
	case *rounds < 1 || *rate < 1 || *sessions < 1 || *clients < 1 || *slice <= 0:
		log.Fatal("-rounds, -rate, -sessions, -clients and -slice must be positive")
	}
	mustBe(*tmpfsDir, true)
	mustBe(*diskDir, false)

	disk, err := os.MkdirTemp(*diskDir, "agentsec-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(disk)
	tmpfs, err := os.MkdirTemp(*tmpfsDir, "agentsec-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmpfs)

	upstreamProc, upstreamURL := startChild("-upstream")
	defer upstreamProc.Kill()
	proxyProc, proxyURL := startChild("-proxy", upstreamURL)
	defer proxyProc.Kill()
	bin := buildAgentsec(disk)
	onTmpfs := startGateway(bin, filepath.Join(tmpfs, "gateway"), upstreamURL, false)
	defer onTmpfs.stop()
	onDisk := startGateway(bin, filepath.Join(disk, "gateway"), upstreamURL, false)
	defer onDisk.stop()

	probe := newSyncProbe(disk)
	defer probe.close()

	paths := []*path{
		{name: "direct", sessions: connectAll(upstreamURL, "", *sessions)},
		{name: "proxy", sessions: connectAll(proxyURL, "", *sessions), proc: proxyProc},
		{name: "gateway, log on tmpfs", sessions: connectAll(onTmpfs.url, token, *sessions), proc: onTmpfs.proc},
		{name: "gateway, log on disk", sessions: connectAll(onDisk.url, token, *sessions), proc: onDisk.proc},
	}
	direct, proxy, gwTmpfs, gwDisk := paths[0], paths[1], paths[2], paths[3]
	for _, p := range paths { // warm up: connections, the log's first pages
		saturate(p.sessions, *clients, time.Second, 0)
	}

	fmt.Printf("# agentsec gateway against its floors, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Printf("# %d rounds; per round and path %v at %d calls/s in turns of %v, then %v with %d callers; %d sessions per path; %d CPUs; %s\n",
		*rounds, *duration, *rate, *slice, *duration, *clients, *sessions, runtime.NumCPU(), runtime.Version())
	fmt.Printf("# log on disk in %s, on tmpfs in %s\n\n", disk, tmpfs)
	fmt.Println("Each round (latencies at the offered rate as p50/p90; saturation in calls/s):")
	fmt.Println()
	fmt.Println("| round | direct | proxy | gateway, tmpfs | gateway, disk | fdatasync | fdatasync beside the gateway | overhead | durability p50 | durability p90 | the same ÷ fdatasync beside the gateway, p50 | p90 | saturation: direct | proxy | gateway, disk | gateway ÷ proxy | errors |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	var ratios [6][]float64
	var cpu, cpuFixed [3][]float64
	for r := range *rounds {
		order := rotate(paths, r)
		fixed, sync, loaded := atFixedRate(order, gwTmpfs, probe, *rate, *duration, *slice)
		sat := map[*path]*result{}
		for _, p := range order {
			sat[p] = p.measure(func() *result { return saturate(p.sessions, *clients, *duration, 0) })
		}
		d, px, gt, gd := fixed[direct], fixed[proxy], fixed[gwTmpfs], fixed[gwDisk]
		overhead := float64(gt.pct(50)-d.pct(50)) / float64(px.pct(50)-d.pct(50))
		durable50 := float64(gd.pct(50)-gt.pct(50)) / float64(sync.pct(50))
		durable90 := float64(gd.pct(90)-gt.pct(90)) / float64(sync.pct(90))
		saturation := sat[gwDisk].rate() / sat[proxy].rate()
		loaded50 := float64(gd.pct(50)-gt.pct(50)) / float64(loaded.pct(50))
		loaded90 := float64(gd.pct(90)-gt.pct(90)) / float64(loaded.pct(90))
		for i, v := range []float64{overhead, durable50, durable90, saturation, loaded50, loaded90} {
			ratios[i] = append(ratios[i], v)
		}
		for i, p := range paths[1:] {
			cpu[i] = append(cpu[i], float64(sat[p].cpuPerCall().Microseconds()))
			cpuFixed[i] = append(cpuFixed[i], float64(fixed[p].cpuPerCall().Microseconds()))
		}
		var errs int64
		for _, p := range paths {
			errs += fixed[p].errors + sat[p].errors
		}
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %.2f | %d |\n", r+1,
			p5090(d), p5090(px), p5090(gt), p5090(gd), p5090(sync), p5090(loaded), overhead, durable50, durable90, loaded50, loaded90,
			sat[direct].rate(), sat[proxy].rate(), sat[gwDisk].rate(), saturation, errs)
	}

	fmt.Println()
	fmt.Printf("Medians of the %d rounds:\n\n", *rounds)
	fmt.Println("| measure | floor | goal | median | rounds' range |")
	fmt.Println("|---|---|---|---|---|")
	goals := []struct{ name, floor, goal string }{
		{fmt.Sprintf("governance overhead at %d calls/s: (gateway, log on tmpfs − direct) ÷ (bare reverse proxy − direct), p50", *rate), "1.0", "≤ 1.25"},
		{fmt.Sprintf("price of durability at %d calls/s: (gateway, log on disk − the same on tmpfs) ÷ fdatasync, p50", *rate), "1.0", "≤ 1.5"},
		{"the same at p90 ÷ fdatasync p90", "1.0", "≤ 2"},
		{fmt.Sprintf("saturation, %d callers: gateway with the durable log ÷ bare reverse proxy", *clients), "1.0", "≥ 0.9"},
	}
	for i, g := range goals {
		fmt.Printf("| %s | %s | %s | **%.2f** | %.2f–%.2f |\n", g.name, g.floor, g.goal, median(ratios[i]), slices.Min(ratios[i]), slices.Max(ratios[i]))
	}
	fmt.Println()
	fmt.Println("The price of durability against an fdatasync measured beside the gateway's load (the gateway on tmpfs at the same rate), not on an idle machine:")
	fmt.Println()
	fmt.Println("| measure | median | rounds' range |")
	fmt.Println("|---|---|---|")
	for i, name := range []string{"(gateway, log on disk − the same on tmpfs) ÷ fdatasync beside the gateway, p50", "the same at p90"} {
		v := ratios[4+i]
		fmt.Printf("| %s | **%.2f** | %.2f–%.2f |\n", name, median(v), slices.Min(v), slices.Max(v))
	}
	fmt.Println()
	fmt.Printf("CPU per call at saturation, medians: proxy %.0f µs, gateway on tmpfs %.0f µs, gateway on disk %.0f µs\n",
		median(cpu[0]), median(cpu[1]), median(cpu[2]))
	fmt.Printf("CPU per call at %d calls/s, medians: proxy %.0f µs, gateway on tmpfs %.0f µs, gateway on disk %.0f µs\n",
		*rate, median(cpuFixed[0]), median(cpuFixed[1]), median(cpuFixed[2]))

	if *countCalls > 0 {
		countSyncs(bin, filepath.Join(disk, "traced"), upstreamURL, *countCalls, *sessions, *clients)
	}
}

// A path is one way to the MCP server, with its client sessions and the
// process in the middle, if any.
type path struct {
	name     string
	sessions []*mcp.ClientSession
	proc     *os.Process
}

// measure runs f and adds the CPU time the path's process spent meanwhile.
func (p *path) measure(f func() *result) *result {
	var before time.Duration
	if p.proc != nil {
		before = procCPU(p.proc.Pid)
	}
	r := f()
	if p.proc != nil {
		r.cpu = procCPU(p.proc.Pid) - before
	}
	return r
}

// atFixedRate measures every path, and the fdatasync probe, at rate for
// d each, in slices: the paths take turns slice by slice, so that the
// machine's noise, which comes and goes over seconds, falls on each
// alike. The probe runs twice a turn: alone, on a machine otherwise
// idle, and beside load, a path whose calls take the processors as a
// gateway's do (its latencies, disturbed by the probe, are not kept).
func atFixedRate(order []*path, load *path, probe *syncProbe, rate int, d, slice time.Duration) (fixed map[*path]*result, alone, beside *result) {
	fixed = map[*path]*result{}
	for done := time.Duration(0); done < d; done += slice {
		s := min(slice, d-done)
		for _, p := range order {
			fixed[p] = fixed[p].add(p.measure(func() *result { return fixedRate(p.sessions, rate, s) }))
		}
		alone = alone.add(probe.run(rate, s))
		loaded := make(chan *result)
		go func() { loaded <- probe.run(rate, s) }()
		fixedRate(load.sessions, rate, s)
		beside = beside.add(<-loaded)
	}
	return fixed, alone, beside
}

// countSyncs runs a gateway under strace and prints how many syncs
// (syncCount) it made per governed call, with one caller and with
// clients callers.
func countSyncs(bin, dir, upstream string, calls, sessions, clients int) {
	fmt.Println()
	if _, err := exec.LookPath("strace"); err != nil {
		fmt.Println("Syncs per governed call: not counted, strace is not installed (apt-get install strace).")
		return
	}
	g := startGateway(bin, dir, upstream, true)
	defer g.stop()
	cs := connectAll(g.url, token, sessions)
	saturate(cs, clients, time.Second, 0) // warm up
	fmt.Println("Syncs (fdatasync, fsync and pwritev2 with RWF_DSYNC, counted by strace) per governed call, log on disk:")
	fmt.Println()
	fmt.Println("| callers | calls | syncs | syncs per call | goal |")
	fmt.Println("|---|---|---|---|---|")
	for _, n := range []int{1, clients} {
		before := syncCount(g.trace)
		r := saturate(cs[:min(n, len(cs))], n, time.Hour, int64(calls))
		time.Sleep(100 * time.Millisecond) // a sync still under way is written out
		syncs := syncCount(g.trace) - before
		goal := "≤ 1"
		if n > 1 {
			goal = "≤ 0.1"
		}
		fmt.Printf("| %d | %d | %d | **%.3f** | %s |\n", n, len(r.lat), syncs, float64(syncs)/float64(len(r.lat)), goal)
	}
}

func rotate(paths []*path, r int) []*path {
	r %= len(paths)
	return append(slices.Clone(paths[r:]), paths[:r]...)
}

func p5090(r *result) string {
	return fmt.Sprintf("%s/%s", ms(r.pct(50)), ms(r.pct(90)))
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// mustBe stops the benchmark unless dir is (or, with tmpfs false, is
// not) on tmpfs.
func mustBe(dir string, tmpfs bool) {
	const tmpfsMagic = 0x01021994
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		log.Fatal(err)
	}
	if (st.Type == tmpfsMagic) != tmpfs {
		what := map[bool]string{true: "is not on tmpfs (-tmpfs)", false: "is on tmpfs, not a disk (-disk)"}[tmpfs]
		log.Fatalf("%s %s", dir, what)
	}
}

// procCPU reads a process's user and system time from /proc.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command, which is in parentheses and may hold
	// spaces: utime and stime are the 12th and 13th of them.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}
