package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestGroupManyFailures: however many goroutines fail, wait returns every error; no send can
// block shutdown.
func TestGroupManyFailures(t *testing.T) {
	g, ctx := newGroup(context.Background())
	const n = 50
	for i := range n {
		g.goRun(fmt.Sprint("g", i), func() error { return fmt.Errorf("failure %d", i) })
	}
	g.goRun("waits for cancel", func() error { <-ctx.Done(); return nil })
	done := make(chan error, 1)
	go func() { done <- g.wait() }()
	select {
	case err := <-done:
		var joined interface{ Unwrap() []error }
		if !errors.As(err, &joined) || len(joined.Unwrap()) != n {
			t.Errorf("wait returned %v, want %d errors", err, n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wait blocked")
	}
}

// TestGroupCancellationIsNotAnError: goroutines ended by the parent context make wait return nil.
func TestGroupCancellationIsNotAnError(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	g, ctx := newGroup(parent)
	for i := range 20 {
		g.goRun(fmt.Sprint("g", i), func() error { <-ctx.Done(); return nil })
	}
	cancel()
	if err := g.wait(); err != nil {
		t.Errorf("wait: %v", err)
	}
}
