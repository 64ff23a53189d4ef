package testutil

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	var n atomic.Int32
	if err := Poll(5*time.Second, func() bool { return n.Add(1) == 5 }); err != nil {
		t.Fatalf("Poll of a condition that holds on the fifth look: %v", err)
	}
	if got := n.Load(); got != 5 {
		t.Errorf("cond called %d times, want 5", got)
	}

	start := time.Now()
	err := Poll(50*time.Millisecond, func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "50ms") {
		t.Errorf("Poll of a condition that never holds = %v, want an error naming the timeout", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("Poll gave up after %v, before its timeout", d)
	}
}

// fakeTB records a Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestEventuallyNamesWhat(t *testing.T) {
	f := &fakeTB{TB: t}
	Eventually(f, 10*time.Millisecond, "the moon", func() bool { return false })
	if !strings.Contains(f.msg, "the moon") {
		t.Errorf("failure %q does not name what was waited for", f.msg)
	}
	f.msg = ""
	Eventually(f, time.Second, "the sun", func() bool { return true })
	if f.msg != "" {
		t.Errorf("Eventually of a condition that holds failed: %q", f.msg)
	}
}
