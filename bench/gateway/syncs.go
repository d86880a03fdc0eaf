//go:build linux

package main

import (
	"bytes"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A syncProbe times what the gateway's durable log can't go below: a
// small write followed by fdatasync, in a file of the log's directory,
// offered at the gateway's rate. It writes over a file it first fills, as
// a log that reuses its space does, so that no sync also pays for the
// file growing.
type syncProbe struct {
	f    *os.File
	next int64 // the offset of the next write
}

const probeSpan = 1 << 20 // the bytes the probe writes over, again and again

func newSyncProbe(dir string) *syncProbe {
	f, err := os.Create(filepath.Join(dir, "fdatasync-probe"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := f.Write(make([]byte, probeSpan)); err != nil {
		log.Fatal(err)
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		log.Fatal(err)
	}
	return &syncProbe{f: f}
}

// run offers writes and syncs at rate per second for d.
func (p *syncProbe) run(rate int, d time.Duration) *result {
	buf := bytes.Repeat([]byte{'x'}, 256)
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	res := &result{lat: make([]time.Duration, 0, n)}
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		t0 := time.Now()
		if _, err := p.f.WriteAt(buf, p.next); err != nil {
			log.Fatal(err)
		}
		if err := syscall.Fdatasync(int(p.f.Fd())); err != nil {
			log.Fatal(err)
		}
		res.lat = append(res.lat, time.Since(t0))
		p.next = (p.next + int64(len(buf))) % probeSpan
	}
	res.elapsed = time.Since(start)
	return res
}

func (p *syncProbe) close() {
	p.f.Close()
	os.Remove(p.f.Name())
}

// syncTrace names the system calls that may sync a file: strace traces
// them. The record log writes and syncs its frames in one pwritev2 with
// RWF_DSYNC; SQLite syncs with fdatasync and fsync.
const syncTrace = "fdatasync,fsync,syncfs,sync_file_range,msync,pwritev2"

// syncCount counts the syncs in an strace output file of syncTrace's
// calls, its strings cut to nothing (-s 0): each fdatasync, fsync,
// syncfs and sync_file_range, each msync with MS_SYNC, each pwritev2
// with RWF_DSYNC or RWF_SYNC. A call appears once in full, "123
// fdatasync(7) = 0", or split by another thread's, its first half
// "123 fdatasync(7 <unfinished ...>" holding all its arguments.
func syncCount(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	n := 0
	for _, line := range bytes.Split(data, []byte("\n")) {
		if bytes.Contains(line, []byte("resumed>")) {
			continue
		}
		switch {
		case bytes.Contains(line, []byte(" fdatasync(")), bytes.Contains(line, []byte(" fsync(")),
			bytes.Contains(line, []byte(" syncfs(")), bytes.Contains(line, []byte(" sync_file_range(")):
			n++
		case bytes.Contains(line, []byte(" msync(")):
			if bytes.Contains(line, []byte("MS_SYNC")) {
				n++
			}
		case bytes.Contains(line, []byte(" pwritev2(")):
			if bytes.Contains(line, []byte("RWF_DSYNC")) || bytes.Contains(line, []byte("RWF_SYNC")) {
				n++
			}
		}
	}
	return n
}
