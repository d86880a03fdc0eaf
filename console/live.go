package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// The live view follows the audit log itself, not this process's
// decisions: what it shows is what was recorded, by every replica that
// shares the log.

// tailInterval is how often the tailer reads the log for new records.
const tailInterval = 200 * time.Millisecond

// subscriberQueue bounds the records waiting for one live view; past it
// the view is told it missed some.
const subscriberQueue = 1024

// A recordRow is a record as the console shows it.
type recordRow struct {
	Seq           uint64 `json:"seq"`
	Time          string `json:"time"`
	Shown         string `json:"-"` // Time to the second, as the page shows it
	Event         string `json:"event"`
	Agent         string `json:"agent"`
	Session       string `json:"session"`
	Tool          string `json:"tool"`
	Scope         string `json:"scope,omitempty"`
	Outcome       string `json:"outcome"`
	Reason        string `json:"reason"`
	Tokens        int64  `json:"tokens"`
	Config        string `json:"config"`
	RequiredLevel string `json:"-"`
	AssignedLevel string `json:"-"`
}

func rowOf(r *audit.Record) recordRow {
	return recordRow{Seq: r.Seq, Time: r.Time.UTC().Format(time.RFC3339Nano), Shown: r.Time.UTC().Format("2006-01-02 15:04:05Z"),
		Event: r.Event, Agent: r.Agent,
		Session: r.Session, Tool: r.Tool, Scope: r.Scope, Outcome: string(r.Outcome), Reason: r.Reason,
		Tokens: r.Tokens, Config: r.Attrs["config"], RequiredLevel: r.RequiredLevel, AssignedLevel: r.AssignedLevel}
}

// A liveFilter selects the records a live view shows.
type liveFilter struct {
	Agent, Tool, Event, Outcome string
}

func liveFilterOf(r *http.Request) liveFilter {
	q := r.URL.Query()
	return liveFilter{Agent: q.Get("agent"), Tool: q.Get("tool"), Event: q.Get("event"), Outcome: q.Get("outcome")}
}

func (f liveFilter) matches(r *audit.Record) bool {
	return (f.Agent == "" || r.Agent == f.Agent) && (f.Tool == "" || r.Tool == f.Tool) &&
		(f.Event == "" || r.Event == f.Event) && (f.Outcome == "" || string(r.Outcome) == f.Outcome)
}

// A tailer reads the records appended to the log and hands them to the
// live views, while there are any.
type tailer struct {
	store audit.Store

	mu      sync.Mutex
	subs    map[chan audit.Record]bool
	running bool
	next    uint64 // the first record not yet read
}

func newTailer(store audit.Store) *tailer {
	return &tailer{store: store, subs: map[chan audit.Record]bool{}}
}

// subscribe returns a channel of the records appended from position
// start on — the log's end when the subscription began — closed if the
// view falls too far behind, and a function that ends the subscription.
func (t *tailer) subscribe(ctx context.Context) (records <-chan audit.Record, stop func(), start uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.running {
		size, err := t.store.Size(ctx)
		if err != nil {
			return nil, nil, 0, err
		}
		t.next, t.running = size, true
		go t.run()
	}
	ch := make(chan audit.Record, subscriberQueue)
	t.subs[ch] = true
	return ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.subs[ch] {
			delete(t.subs, ch)
			close(ch)
		}
	}, t.next, nil
}

// maxCatchUp bounds the records the tailer reads at once: further behind —
// the store was unreadable while other replicas appended — it skips
// ahead, and every view is told it missed some.
const maxCatchUp = 10 * subscriberQueue

// run reads new records every tailInterval until no view is left.
func (t *tailer) run() {
	tick := time.NewTicker(tailInterval)
	defer tick.Stop()
	for range tick.C {
		t.mu.Lock()
		if len(t.subs) == 0 {
			t.running = false
			t.mu.Unlock()
			return
		}
		from := t.next
		t.mu.Unlock()
		size, err := t.size()
		if err != nil || size <= from {
			continue // the log's own failure is on /readyz; the views wait
		}
		var records []audit.Record
		if size-from <= maxCatchUp {
			if records, err = t.read(from, size); err != nil {
				continue
			}
		}
		t.mu.Lock()
		if size-from > maxCatchUp {
			t.dropAll()
		}
		for _, r := range records {
			for ch := range t.subs {
				select {
				case ch <- r:
				default: // too far behind: the view is told, and ends
					delete(t.subs, ch)
					close(ch)
				}
			}
		}
		t.next = size
		t.mu.Unlock()
	}
}

// dropAll ends every subscription, which tells each view it missed
// records. The caller holds t.mu.
func (t *tailer) dropAll() {
	for ch := range t.subs {
		delete(t.subs, ch)
		close(ch)
	}
}

func (t *tailer) size() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return t.store.Size(ctx)
}

// read returns the records in [from, to). A stored entry that does not
// decode is left out: someone who could write the database wrote it, and
// the live view goes on past it.
func (t *tailer) read(from, to uint64) ([]audit.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []audit.Record
	err := audit.QueryEach(ctx, t.store, audit.Filter{}, from, to,
		func(r *audit.Record) error {
			out = append(out, *r)
			return nil
		}, func(uint64, error) {})
	return out, err
}

// liveBacklog is how many recent records the live page starts with, read
// from at most liveLookback records back.
const (
	liveBacklog  = 50
	liveLookback = 5000
)

func (u *ui) livePage(w http.ResponseWriter, r *http.Request, op *operator) {
	f := liveFilterOf(r)
	v := &view{Title: "Live decisions", Page: "live", Operator: op, Filter: f}
	size, err := u.cfg.Stack.Audit.Store().Size(r.Context())
	if err == nil {
		from := uint64(0)
		if size > liveLookback {
			from = size - liveLookback
		}
		var recent []audit.Record
		recent, err = u.tail.read(from, size)
		v.LiveFrom = strconv.FormatUint(size, 10)
		for i := len(recent) - 1; i >= 0 && len(v.Records) < liveBacklog; i-- {
			if f.matches(&recent[i]) {
				v.Records = append(v.Records, rowOf(&recent[i]))
			}
		}
	}
	if err != nil {
		v.Error = "the audit log can't be read: " + oneLine(err.Error())
	}
	u.render(w, http.StatusOK, "live", v)
}

// liveStream sends the records appended from now on that match the
// view's filter, as server-sent events: "record" with the record's row as
// JSON and its position as the event's id, "gap" if the view fell behind
// and missed some. A view that reconnects with Last-Event-ID is sent what
// it missed first, up to subscriberQueue records; past that, "gap".
func (u *ui) liveStream(w http.ResponseWriter, r *http.Request, op *operator) {
	if !u.openLiveView(op.ID) {
		plain(w, http.StatusServiceUnavailable, "too many live views are open: close some")
		return
	}
	defer u.closeLiveView(op.ID)
	f := liveFilterOf(r)
	records, stop, start, err := u.tail.subscribe(r.Context())
	if err != nil {
		plain(w, http.StatusServiceUnavailable, "the audit log can't be read: "+oneLine(err.Error()))
		return
	}
	defer stop()
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream lasts as long as the page
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": live\n\n")
	// pos is the position of the last record this stream went past,
	// sent or not: an id-only event tells the browser, which says it back
	// as Last-Event-ID when it reconnects.
	pos, hasPos := uint64(0), false
	send := func(rec *audit.Record) {
		pos, hasPos = rec.Seq, true
		if f.matches(rec) {
			data, _ := json.Marshal(rowOf(rec))
			fmt.Fprintf(w, "id: %d\nevent: record\ndata: %s\n\n", rec.Seq, data)
		}
	}
	// What the view missed: since the page was rendered (?from=), or
	// since the last event it got before it reconnected.
	from, err := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
	if last, lerr := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64); lerr == nil {
		from, err = last+1, nil
	}
	if err == nil && from < start {
		if start-from > subscriberQueue {
			fmt.Fprint(w, "event: gap\ndata: {}\n\n")
			rc.Flush()
			return
		}
		missed, err := u.tail.read(from, start)
		if err != nil {
			return
		}
		for i := range missed {
			send(&missed[i])
		}
	}
	rc.Flush()
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepAlive.C:
			if hasPos {
				fmt.Fprintf(w, "id: %d\n\n", pos)
			} else {
				fmt.Fprint(w, ": keep-alive\n\n")
			}
		case rec, ok := <-records:
			if !ok {
				fmt.Fprint(w, "event: gap\ndata: {}\n\n")
				rc.Flush()
				return
			}
			send(&rec)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// openLiveView counts a live stream of the operator id, or reports false
// if that would pass maxOperatorLiveViews or maxLiveViews.
func (u *ui) openLiveView(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.liveViews[id] >= maxOperatorLiveViews || u.liveTotal >= maxLiveViews {
		return false
	}
	if u.liveViews == nil {
		u.liveViews = map[string]int{}
	}
	u.liveViews[id]++
	u.liveTotal++
	return true
}

// closeLiveView uncounts a live stream of the operator id.
func (u *ui) closeLiveView(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.liveTotal--
	if u.liveViews[id]--; u.liveViews[id] <= 0 {
		delete(u.liveViews, id)
	}
}
