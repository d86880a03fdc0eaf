package budgettest

import (
	"slices"
	"sync"
)

// AtOnce calls fn from n goroutines at once and returns the non-nil errors
// they returned; the slice is empty if none failed. Every goroutine is
// started and waiting before any is let go, so the calls contend as hard
// as the scheduler allows. AtOnce returns when all of them have finished.
//
// Concurrency tests of a budget.Store, or of code built on one, use it to
// race many callers on one session:
//
//	errs := budgettest.AtOnce(1000, func() error {
//		_, err := store.Reserve(ctx, session)
//		return err
//	})
//	// 1000-len(errs) calls took a slot.
//
// fn runs outside the test's goroutine, so it must report failures by
// returning them, never with t.Fatal. AtOnce panics if n is negative.
func AtOnce(n int, fn func() error) []error {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, n)
	ready.Add(n)
	for i := range n {
		done.Go(func() {
			ready.Done()
			<-start
			errs[i] = fn()
		})
	}
	ready.Wait()
	close(start)
	done.Wait()
	return slices.DeleteFunc(errs, func(err error) bool { return err == nil })
}
