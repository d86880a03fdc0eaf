package main

import (
	"bytes"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fdatasyncProbe times what the gateway's durable log can't go below: a
// small write followed by fdatasync, in a file of dir, offered at rate
// per second for d, as the gateway's calls are. It writes over a file it
// first fills, as a log that reuses its space does, so that no sync also
// pays for the file growing.
func fdatasyncProbe(dir string, rate int, d time.Duration) *result {
	f, err := os.Create(filepath.Join(dir, "fdatasync-probe"))
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	const span = 1 << 20
	if _, err := f.Write(make([]byte, span)); err != nil {
		log.Fatal(err)
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		log.Fatal(err)
	}
	buf := bytes.Repeat([]byte{'x'}, 256)
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	res := &result{lat: make([]time.Duration, 0, n)}
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(i*len(buf))%span); err != nil {
			log.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			log.Fatal(err)
		}
		res.lat = append(res.lat, time.Since(t0))
	}
	res.elapsed = time.Since(start)
	return res
}

// syncCount counts the fdatasync and fsync calls in an strace output
// file: lines such as "123 fdatasync(7) = 0", or the first half of one
// split by another thread's, "123 fdatasync(7 <unfinished ...>".
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
		if bytes.Contains(line, []byte(" fdatasync(")) || bytes.Contains(line, []byte(" fsync(")) {
			n++
		}
	}
	return n
}
