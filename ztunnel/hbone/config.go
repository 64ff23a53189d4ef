package hbone

import (
	"errors"
	"fmt"
	"time"
)

// Window sizing. HTTP/2 flow control is the tunnel's backpressure; windows must cover the
// bandwidth-delay product or a single stream stalls. Receive buffers are pooled chunks taken as
// data arrives and returned as it is read, so a large window costs memory only while data waits.
const (
	maxWindow = 1<<31 - 1
	mib       = 1 << 20
)

// FlowConfig is what both ends configure the same way.
type FlowConfig struct {
	// StreamWindowMiB is the receive window of each stream, in MiB.
	StreamWindowMiB int
	// ConnWindowMultiple sizes the connection window as a multiple of the stream window, so that
	// that many streams can run at full speed at once.
	ConnWindowMultiple int
	// MaxHeaderBytes bounds the header list a peer may send (SETTINGS_MAX_HEADER_LIST_SIZE).
	MaxHeaderBytes int
	// PingInterval: when nothing was received for this long, send a PING; PingTimeout: close the
	// connection when its answer does not arrive in time. This is how dead peers are found.
	PingInterval time.Duration
	PingTimeout  time.Duration
}

func defaultFlow() FlowConfig {
	return FlowConfig{
		StreamWindowMiB:    4,
		ConnWindowMultiple: 4,
		MaxHeaderBytes:     16 << 10,
		PingInterval:       30 * time.Second,
		PingTimeout:        15 * time.Second,
	}
}

func (f FlowConfig) streamWindow() int32 { return int32(f.StreamWindowMiB * mib) }
func (f FlowConfig) connWindow() int32   { return int32(f.StreamWindowMiB * mib * f.ConnWindowMultiple) }

func (f FlowConfig) validate() []error {
	var errs []error
	if f.StreamWindowMiB < 1 {
		errs = append(errs, fmt.Errorf("StreamWindowMiB %d: must be at least 1", f.StreamWindowMiB))
	}
	if f.ConnWindowMultiple < 1 {
		errs = append(errs, fmt.Errorf("ConnWindowMultiple %d: must be at least 1", f.ConnWindowMultiple))
	}
	if f.StreamWindowMiB >= 1 && f.ConnWindowMultiple >= 1 && int64(f.StreamWindowMiB)*mib*int64(f.ConnWindowMultiple) > maxWindow {
		errs = append(errs, fmt.Errorf("connection window %d MiB x %d: exceeds the HTTP/2 maximum of 2^31-1 bytes", f.StreamWindowMiB, f.ConnWindowMultiple))
	}
	if f.MaxHeaderBytes < 1<<10 || f.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("MaxHeaderBytes %d: must be between 1 KiB and 1 MiB", f.MaxHeaderBytes))
	}
	if f.PingInterval <= 0 {
		errs = append(errs, fmt.Errorf("PingInterval %v: must be positive", f.PingInterval))
	}
	if f.PingTimeout <= 0 {
		errs = append(errs, fmt.Errorf("PingTimeout %v: must be positive", f.PingTimeout))
	}
	return errs
}

// ServerConfig configures a Server.
type ServerConfig struct {
	FlowConfig
	// MaxConcurrentStreams is the most tunnels a client may have open on one connection.
	MaxConcurrentStreams uint32
	// DrainTimeout is how long Serve waits, after its context ends, for open tunnels to finish
	// before cutting them.
	DrainTimeout time.Duration
	// HandshakeTimeout bounds a client's TLS handshake.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the TLS handshakes under way at once; a connection beyond it is
	// closed at once.
	MaxHandshakes int
}

// DefaultServerConfig returns the configuration the mesh runs with.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{FlowConfig: defaultFlow(), MaxConcurrentStreams: 100, DrainTimeout: 5 * time.Second, HandshakeTimeout: 10 * time.Second,
		MaxHandshakes: 128}
}

// Validate reports every problem with c.
func (c ServerConfig) Validate() error {
	errs := c.FlowConfig.validate()
	if c.MaxConcurrentStreams < 1 {
		errs = append(errs, errors.New("MaxConcurrentStreams: must be at least 1"))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("DrainTimeout %v: must not be negative", c.DrainTimeout))
	}
	if c.HandshakeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("HandshakeTimeout %v: must be positive", c.HandshakeTimeout))
	}
	if c.MaxHandshakes <= 0 {
		errs = append(errs, fmt.Errorf("MaxHandshakes %d: must be positive", c.MaxHandshakes))
	}
	return errors.Join(errs...)
}

// ClientConfig configures a Client.
type ClientConfig struct {
	FlowConfig
	// MaxStreamsPerConn caps the tunnels on one pooled connection; the server's
	// SETTINGS_MAX_CONCURRENT_STREAMS caps it too. A new connection opens when all are full.
	MaxStreamsPerConn int
	// IdleTimeout releases a pooled connection that has carried no tunnel for this long.
	IdleTimeout time.Duration
	// DialTimeout bounds TCP connect plus TLS handshake plus HTTP/2 preface.
	DialTimeout time.Duration
}

// DefaultClientConfig returns the configuration the mesh runs with.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{FlowConfig: defaultFlow(), MaxStreamsPerConn: 100, IdleTimeout: 60 * time.Second, DialTimeout: 10 * time.Second}
}

// Validate reports every problem with c.
func (c ClientConfig) Validate() error {
	errs := c.FlowConfig.validate()
	if c.MaxStreamsPerConn < 1 {
		errs = append(errs, fmt.Errorf("MaxStreamsPerConn %d: must be at least 1", c.MaxStreamsPerConn))
	}
	if c.IdleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("IdleTimeout %v: must be positive", c.IdleTimeout))
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, fmt.Errorf("DialTimeout %v: must be positive", c.DialTimeout))
	}
	return errors.Join(errs...)
}
