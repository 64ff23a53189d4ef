// Package netutil holds the socket habits that every server in the mesh shares: accepting
// through load, and serving the admin, metrics and readiness ports.
//
// Rules: a listener keeps serving through load. Running out of file descriptors, or a
// connection aborted before it was accepted, is a passing condition; only the listener closing
// (or its context ending) stops an accept loop.
package netutil

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// Accept returns ln's next connection. Other errors than the listener closing are logged and
// retried after a backoff that doubles from 5 ms to 1 s, as net/http's server does, so that a
// burst that exhausts the file descriptors leaves the port served once it passes. It returns an
// error only when ln is closed or ctx ends.
func Accept(ctx context.Context, ln net.Listener, log *slog.Logger) (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		log.Warn("accept failed, retrying", "listener", ln.Addr().String(), "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}
