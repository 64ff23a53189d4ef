package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// group runs the goroutines of one istiod-lite: the first to fail cancels the others, and wait
// returns once all have ended, with every error. Errors are appended under a lock, never sent
// on a channel: a channel sized to today's number of goroutines would block the one added
// tomorrow on its send, and with it the wait of shutdown.
type group struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error
}

// newGroup returns a group and the context its goroutines run in, cancelled when one fails
// or parent ends.
func newGroup(parent context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(parent)
	return &group{cancel: cancel}, ctx
}

// goRun runs f; an error from it is recorded under name and stops the group.
func (g *group) goRun(name string, f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
			g.cancel()
		}
	}()
}

// wait waits for every goroutine and returns their errors joined (nil when none failed).
func (g *group) wait() error {
	g.wg.Wait()
	g.cancel()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}
