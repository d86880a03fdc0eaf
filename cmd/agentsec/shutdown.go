package main

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// stopTimeout bounds how long agentsec takes to exit after SIGINT or
// SIGTERM. Within it the gateway commands end the calls in flight, close
// their upstreams — a server that ignores its closed stdin gets SIGTERM
// after a second and SIGKILL after two — and sign the last checkpoint;
// serve gives open HTTP requests 5 seconds. It is under Docker's default
// of 10 seconds between SIGTERM and SIGKILL, the shortest of the usual
// supervisors' (Kubernetes waits 30, systemd 90).
const stopTimeout = 9 * time.Second

// stopOnSignal cancels the command on the first signal from sigs, so it
// winds down: a gateway stops taking calls, ends those in flight, closes
// its upstreams and signs its last checkpoint. A second signal, or limit
// passing, exits the process at once: whoever stops agentsec gets it
// stopped in bounded time, at the cost of that checkpoint.
func (m *Main) stopOnSignal(sigs <-chan os.Signal, cancel context.CancelCauseFunc, limit time.Duration, exit func(int)) {
	first, ok := <-sigs
	if !ok {
		return
	}
	cancel(fmt.Errorf("stopped by %s", signalName(first)))
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case sig := <-sigs:
		fmt.Fprintf(m.Stderr, "agentsec: %s during shutdown: exiting at once; calls in flight are cut off and the last checkpoint may be unsigned\n",
			signalName(sig))
	case <-timer.C:
		fmt.Fprintf(m.Stderr, "agentsec: still shutting down %v after %s: exiting at once; the last checkpoint may be unsigned\n",
			limit, signalName(first))
	}
	exit(1)
}

// signalName names a signal as kill(1) and supervisors do.
func signalName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}
