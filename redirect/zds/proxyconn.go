package zds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
)

// A proxyConn is one proxy's connection. Messages go out one at a time, in queue order, each
// waiting for its ack: one writer goroutine (writeLoop) sends and waits; the connection's
// goroutine (readLoop) reads acks and hands them over. Either closes the connection on error,
// which ends the other.
type proxyConn struct {
	s    *Server
	uc   *net.UnixConn
	pc   *packetConn
	peer Peer
	log  *slog.Logger

	mu       sync.Mutex
	queue    []*request
	awaiting bool  // a message is out and its ack not yet read
	cause    error // why the connection was closed; nil while open
	wake     chan struct{}
	acks     chan *zdsv1.Ack
	done     chan struct{}
}

// A request is one message for one connection.
type request struct {
	data []byte
	fd   *os.File // sent as SCM_RIGHTS, then closed; owned by the request
	// Exactly one of these says where the outcome goes.
	done      chan<- error // Add or Del
	replayUID string       // a replayed workload: OnReplayAck
}

func (r *request) finish(s *Server, err error) {
	if r.fd != nil {
		r.fd.Close()
		r.fd = nil
	}
	switch {
	case r.done != nil:
		r.done <- err // buffered
	case r.replayUID != "":
		s.replayAck(r.replayUID, err)
	}
}

// serve runs one accepted connection to its end.
func (s *Server) serve(ctx context.Context, uc *net.UnixConn) {
	c := &proxyConn{
		s: s, uc: uc, pc: newPacketConn(uc), log: s.log,
		wake: make(chan struct{}, 1), acks: make(chan *zdsv1.Ack, 1), done: make(chan struct{}),
	}
	stop := context.AfterFunc(ctx, func() { c.close(context.Cause(ctx)) })
	defer stop()
	defer c.close(nil)

	pid, uid, err := peerCred(uc)
	if err != nil {
		c.log.Warn("zds: SO_PEERCRED", "err", err)
	}
	c.peer = Peer{PID: pid, UID: uid}
	c.log = s.log.With(peerAttrs(c.peer))

	hello, err := c.readHello()
	if err != nil {
		c.logEnd(c.closeWith(err))
		return
	}
	if !s.register(c, hello) {
		return
	}
	c.log = s.log.With(peerAttrs(c.peer))
	c.log.Info("zds: proxy connected", "version", hello.Version)
	if s.cfg.OnProxy != nil {
		// After register, so that Proxies() lists it; before the writer starts, so before the
		// replay is sent.
		s.cfg.OnProxy(c.peer, true)
	}

	var wg sync.WaitGroup
	wg.Go(c.writeLoop)
	err = c.readLoop()
	cause := c.closeWith(err)
	s.unregister(c)
	wg.Wait()
	// Nothing is queued any more (unregistered), and the writer is gone: fail what is left.
	c.mu.Lock()
	left := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, r := range left {
		r.finish(s, ErrProxyGone)
	}
	c.logEnd(cause)
	if s.cfg.OnProxy != nil {
		s.cfg.OnProxy(c.peer, false)
	}
}

func (c *proxyConn) readHello() (*zdsv1.Hello, error) {
	if err := c.uc.SetReadDeadline(time.Now().Add(c.s.cfg.AckTimeout)); err != nil {
		return nil, err
	}
	b, fds, err := c.pc.read()
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	m, err := decodeProxy(b, fds)
	if err != nil {
		return nil, err
	}
	hello := m.GetHello()
	switch {
	case hello == nil:
		return nil, malformed("first message is not Hello")
	case hello.Version != Version:
		return nil, malformed("hello version %d, want %d", hello.Version, Version)
	}
	return hello, c.uc.SetReadDeadline(time.Time{})
}

func (c *proxyConn) readLoop() error {
	for {
		b, fds, err := c.pc.read()
		if err != nil {
			return err
		}
		m, err := decodeProxy(b, fds)
		if err != nil {
			return err
		}
		ack := m.GetAck()
		if ack == nil {
			return malformed("Hello after Hello")
		}
		c.mu.Lock()
		ok := c.awaiting
		c.awaiting = false
		c.mu.Unlock()
		if !ok {
			return malformed("ack with no message outstanding")
		}
		c.acks <- ack // room for one, and only one is outstanding
	}
}

func (c *proxyConn) writeLoop() {
	for {
		r := c.next()
		if r == nil {
			return
		}
		err := c.exchange(r)
		r.finish(c.s, err)
		var ackErr *AckError
		if err != nil && !errors.As(err, &ackErr) {
			// A write that failed or an ack that did not come: the two ends no longer agree on
			// what was applied, so drop the connection; the proxy's next one gets a full replay.
			c.close(err)
			return
		}
	}
}

// next waits for the next request; nil once the connection is closed.
func (c *proxyConn) next() *request {
	for {
		c.mu.Lock()
		if c.cause != nil {
			c.mu.Unlock()
			return nil
		}
		if len(c.queue) > 0 {
			r := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			c.awaiting = true
			c.mu.Unlock()
			return r
		}
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-c.done:
		}
	}
}

// exchange sends r and waits for its ack, both within AckTimeout.
func (c *proxyConn) exchange(r *request) error {
	deadline := time.Now().Add(c.s.cfg.AckTimeout)
	if err := c.pc.write(r.data, r.fd, deadline); err != nil {
		return fmt.Errorf("%w: write: %v", ErrProxyGone, err)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case ack := <-c.acks:
		return ackResult(ack)
	case <-c.done:
		select {
		case ack := <-c.acks: // it made it before the close
			return ackResult(ack)
		default:
			return ErrProxyGone
		}
	case <-t.C:
		return fmt.Errorf("%w: no ack within %v", ErrProxyGone, c.s.cfg.AckTimeout)
	}
}

func ackResult(a *zdsv1.Ack) error {
	if a.Error != "" {
		return &AckError{Msg: a.Error}
	}
	return nil
}

// enqueue is called with s.mu held, for a registered connection, so never after the final drain.
func (c *proxyConn) enqueue(r *request) {
	c.mu.Lock()
	c.queue = append(c.queue, r)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *proxyConn) close(cause error) { c.closeWith(cause) }

// closeWith closes the connection, recording the first cause (io.EOF when none is given), and
// returns that first cause.
func (c *proxyConn) closeWith(cause error) error {
	if cause == nil {
		cause = io.EOF
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause == nil {
		c.cause = cause
		close(c.done)
		c.uc.Close()
	}
	return c.cause
}

func (c *proxyConn) logEnd(cause error) {
	switch {
	case errors.Is(cause, context.Canceled), errors.Is(cause, io.EOF):
		c.log.Info("zds: proxy disconnected")
	default:
		c.log.Warn("zds: proxy connection closed", "err", cause)
	}
}
