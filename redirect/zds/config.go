package zds

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ServerConfig configures the agent's end.
type ServerConfig struct {
	// Path of the unix socket to listen on.
	Path string
	// Log receives connection events and malformed-input errors. Nil: discarded.
	Log *slog.Logger
	// AckTimeout bounds a proxy's Hello after it connects and each ack after a message is sent.
	// A proxy that misses it is disconnected (and gets a full replay when it reconnects).
	AckTimeout time.Duration
	// OnReplayAck, if set, is called once for each workload replayed to a new proxy, with the
	// proxy's verdict (nil, an *AckError, or an ErrProxyGone error). It runs on the
	// connection's writer goroutine: it must not block, nor call Add or Del.
	OnReplayAck func(uid string, err error)
	// OnProxy, if set, is called when a proxy has said Hello (before its replay) and when it is
	// gone. It runs on the connection's goroutine and must not block.
	OnProxy func(p Peer, connected bool)
}

// DefaultServerConfig returns the configuration the agent runs with, but for Path.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{AckTimeout: 5 * time.Second}
}

// Validate reports every problem with c.
func (c ServerConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path: must be set"))
	}
	if c.AckTimeout <= 0 {
		errs = append(errs, fmt.Errorf("AckTimeout %v: must be positive", c.AckTimeout))
	}
	return errors.Join(errs...)
}

// Backoff paces reconnection: Initial after a failure, doubling up to Max, back to Initial once
// a connection got through a replay.
type Backoff struct {
	Initial, Max time.Duration
}

// ClientConfig configures the proxy's end.
type ClientConfig struct {
	// Path of the agent's unix socket.
	Path string
	// Node is sent in Hello.
	Node string
	// Log receives connection events and malformed-input errors. Nil: discarded.
	Log *slog.Logger
	// Handler applies the agent's messages.
	Handler Handler
	Backoff Backoff
}

// DefaultClientConfig returns the configuration ztunnel runs with, but for Path, Node and Handler.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{Backoff: Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}}
}

// Validate reports every problem with c.
func (c ClientConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path: must be set"))
	}
	if c.Node == "" {
		errs = append(errs, errors.New("node: must be set"))
	}
	if c.Handler == nil {
		errs = append(errs, errors.New("handler: must be set"))
	}
	if c.Backoff.Initial <= 0 {
		errs = append(errs, fmt.Errorf("Backoff.Initial %v: must be positive", c.Backoff.Initial))
	}
	if c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("Backoff.Max %v: must be at least Backoff.Initial", c.Backoff.Max))
	}
	return errors.Join(errs...)
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
