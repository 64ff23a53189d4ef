// Package testutil holds the helpers that unit tests across the module share, so that each
// need has one helper rather than a copy per package. It holds only test helpers: nothing
// outside _test.go files may import it.
package testutil

import (
	"fmt"
	"testing"
	"time"
)

// The polling interval starts short, so that a condition that is about to hold costs the test
// almost nothing, and grows, so that a slow one does not spin a shared CPU.
const (
	minInterval = time.Millisecond
	maxInterval = 20 * time.Millisecond
)

// Eventually polls cond until it holds, and fails the test naming what it waited for if it
// does not within timeout. Like t.Fatalf, it must be called from the test's goroutine.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Poll polls cond until it holds, and returns an error if it does not within timeout. It is
// for callers that must not stop the test, such as cleanups that report with t.Errorf, or that
// write their own failure message.
func Poll(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for wait := minInterval; !cond(); wait = min(2*wait, maxInterval) {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("condition not met within %v", timeout)
		}
		// Never sleep past the deadline: cond gets one last look at it.
		time.Sleep(min(wait, left))
	}
	return nil
}
