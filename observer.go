package agentsec

import (
	"context"
	"errors"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// An Observer watches a Stack's decisions, to count them (the console's
// Prometheus metrics are one). ObserveDecision is called once for each
// decision the Stack settles — a call admitted and ended, or denied at
// any step, or a task's result delivered or withheld — after its record
// was appended or failed to be, on the caller's goroutine: it must be
// quick and safe for concurrent use. It sees what the log holds, and no
// more: an Observer can't change a decision.
type Observer interface {
	ObserveDecision(Decision)
}

// A Decision is one settled decision, as an Observer sees it.
type Decision struct {
	// Record is the decision's audit record: as appended when Recorded,
	// else as it would have been.
	Record audit.Record
	// Recorded says the record is in the log. A call whose record could
	// not be written is denied: if nothing else denied it, Kind is
	// ErrAuditUnavailable.
	Recorded bool
	// Kind is why the call was denied, or its result withheld: the
	// *DeniedError's Kind (ErrTrustDenied, ErrBudgetExceeded, …). It is
	// nil for an allowed call, even one whose tool then failed.
	Kind error
	// BudgetFailed says the budget store failed during the decision: the
	// call was denied for it (ErrBudgetUnavailable), or the release of
	// its slot or the count of its tokens was not stored (the record's
	// "budget_error" attribute says why).
	BudgetFailed bool
	// Ran says the call was admitted and handed to its tool, which ran
	// or may have; Duration is then the time from Begin to the End that
	// settled it (to its record's Time, when it was recorded).
	Ran      bool
	Duration time.Duration
}

// epoch is the origin of admission times: a Call's is time.Since(epoch),
// a read of the monotonic clock alone, half the cost of time.Now.
var epoch = time.Now()

// sinceEpoch is the time on the monotonic clock, from epoch; never 0.
func sinceEpoch() time.Duration { return max(time.Since(epoch), 1) }

// record appends a decision's record and tells the Observer of it: err
// is what the caller will get, began as for observe.
func (s *Stack) record(ctx context.Context, rec *audit.Record, err error, began time.Duration) (audit.Record, error) {
	logged, lerr := s.Audit.Log(ctx, *rec)
	if lerr != nil {
		s.observe(rec, false, err, began)
		return audit.Record{}, lerr
	}
	s.observe(&logged, true, err, began)
	return logged, nil
}

// observe tells the Stack's Observer, if any, of a decision: rec, and
// err as the caller gets it. began is when the call was admitted, from
// epoch, or 0 for one denied before.
func (s *Stack) observe(rec *audit.Record, recorded bool, err error, began time.Duration) {
	if s.observer == nil {
		return
	}
	d := Decision{Record: *rec, Recorded: recorded, Ran: began != 0}
	if de, ok := errors.AsType[*DeniedError](err); ok {
		d.Kind = de.Kind
	}
	if !recorded && d.Kind == nil {
		d.Kind = ErrAuditUnavailable // allowed, but not recorded: denied
	}
	d.BudgetFailed = errors.Is(d.Kind, ErrBudgetUnavailable) || rec.Attrs[budgetErrorKey] != ""
	if d.Ran {
		// The record's time, taken as the log appends it, spares a read
		// of the clock.
		if recorded {
			d.Duration = max(rec.Time.Sub(epoch)-began, 0)
		} else {
			d.Duration = sinceEpoch() - began
		}
	}
	s.observer.ObserveDecision(d)
}
