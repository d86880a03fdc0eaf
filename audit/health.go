package audit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// FailureReportInterval is the least time between two lines a Log writes
// about a failure that persists.
//
// While the log is failed every governed call is denied, and each denial
// is recorded — another failed append — so one line per failure would
// bury the cause under thousands of copies, and none would leave the
// operator guessing why calls are refused. A Log writes one line when it
// fails, with the cause; while it stays failed, a summary at most this
// often (how many failed since the last line, and the latest cause); and
// one when it recovers.
const FailureReportInterval = 10 * time.Second

// health follows one kind of failure of a Log — appends or checkpoints —
// and logs its changes.
type health struct {
	what  string // "append" or "checkpoint"
	until string // what ends the failure

	mu       sync.Mutex
	failing  bool
	since    time.Time // the first failure
	lastLine time.Time // the last line written about it
	unlogged int       // failures since that line
	total    int       // failures since the first
}

// logger returns where the log writes about its health.
func (l *Log) logger() *slog.Logger {
	if l.log != nil {
		return l.log
	}
	return slog.Default()
}

// failed notes a failure with its cause, and logs it if it is the first,
// or if the last line about it is FailureReportInterval old. attrs add
// context to the line.
func (h *health) failed(l *Log, cause error, attrs ...slog.Attr) {
	h.mu.Lock()
	defer h.mu.Unlock() // lines stay in the order of the changes they report
	now := l.clock()
	h.total++
	if !h.failing {
		h.failing, h.since, h.lastLine, h.unlogged = true, now, now, 0
		attrs = append(attrs, slog.String("error", cause.Error()))
		l.logger().LogAttrs(context.Background(), slog.LevelError,
			"audit: "+h.what+" failed; the log is unavailable until "+h.until, attrs...)
		return
	}
	h.unlogged++
	if now.Sub(h.lastLine) < FailureReportInterval {
		return
	}
	attrs = append(attrs, slog.Int("failed", h.unlogged), slog.Time("since", h.since),
		slog.String("error", cause.Error()))
	h.lastLine, h.unlogged = now, 0
	l.logger().LogAttrs(context.Background(), slog.LevelWarn, "audit: "+h.what+"s still failing", attrs...)
}

// recovered notes a success after failures, and logs it.
func (h *health) recovered(l *Log, attrs ...slog.Attr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.failing {
		return
	}
	attrs = append(attrs, slog.Int("failed", h.total), slog.Duration("after", l.clock().Sub(h.since)))
	h.failing, h.total, h.unlogged = false, 0, 0
	l.logger().LogAttrs(context.Background(), slog.LevelInfo, "audit: "+h.what+"s recovered", attrs...)
}
