package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/mesh"
)

// Key identifies a pool of connections: tunnels share a connection only when they have the same
// source identity (the client certificate), destination identity (what the server must prove)
// and destination address.
type Key struct {
	Src, Dst identity.Identity
	Addr     netip.AddrPort
}

// Target is where one tunnel goes.
type Target struct {
	Key
	// Authority is the CONNECT target (:authority), the final ip:port.
	Authority netip.AddrPort
	// Forwarded, Baggage and Traceparent are sent when not empty.
	Forwarded, Baggage, Traceparent string
}

// Dialer opens the TCP connection under a pooled connection; tests and callers that mark sockets
// (SO_MARK, in the pod's netns) supply their own.
type Dialer func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)

// ErrStatus is returned by Dial when the server answers something other than 200.
type ErrStatus struct{ Code int }

func (e ErrStatus) Error() string { return fmt.Sprintf("hbone: server answered %d", e.Code) }

// Client opens tunnels over pooled, multiplexed HTTP/2 connections.
type Client struct {
	cfg   ClientConfig
	creds func(src identity.Identity) (Credentials, error)
	dial  Dialer
	log   *slog.Logger
	t     *http2.Transport

	mu     sync.Mutex
	pools  map[Key]*pool
	byConn map[*http2.ClientConn]*pconn
	closed bool
}

type pool struct {
	conns   []*pconn
	dialing *dialCall // the dial in flight for this key, shared by all who wait for it
}

type dialCall struct {
	done chan struct{}
	err  error
}

// pconn is a pooled connection. active counts its open tunnels; idle fires after IdleTimeout with
// none.
type pconn struct {
	key    Key
	cc     *http2.ClientConn
	raw    net.Conn
	active int
	idle   *time.Timer
	dead   bool // closed; guarded by Client.mu
}

// NewClient returns a client. creds returns the credentials of a source identity (its certificate
// and trust bundle); dial opens TCP connections, nil meaning MarkedDialer(mesh.SocketMark).
func NewClient(cfg ClientConfig, creds func(src identity.Identity) (Credentials, error), dial Dialer, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("client config: %w", err)
	}
	if creds == nil {
		return nil, errors.New("hbone client: nil credentials")
	}
	if dial == nil {
		// Fail closed: an unmarked socket would be redirected back into ztunnel (DESIGN.md §4).
		dial = MarkedDialer(mesh.SocketMark)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg: cfg, creds: creds, dial: dial, log: log.With("component", "hbone-client"),
		pools: map[Key]*pool{}, byConn: map[*http2.ClientConn]*pconn{},
	}
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerStream:     int(cfg.streamWindow()),
		MaxReceiveBufferPerConnection: int(cfg.connWindow()),
		MaxReadFrameSize:              16 << 10,
		SendPingTimeout:               cfg.PingInterval,
		PingTimeout:                   cfg.PingTimeout,
	}}
	t2, err := http2.ConfigureTransports(t1)
	if err != nil {
		return nil, fmt.Errorf("configure http2: %w", err)
	}
	t2.MaxHeaderListSize = uint32(cfg.MaxHeaderBytes)
	// Not strict: in strict mode x/net reserves streams past the server's limit and queues the
	// requests, where the pool must open another connection instead.
	// The transport tells its pool when a connection dies (read error, failed PING, GOAWAY);
	// making this client that pool is how dead connections leave it.
	t2.ConnPool = (*connPool)(c)
	c.t = t2
	return c, nil
}

// Dial opens a tunnel to target. It reuses a pooled connection with a free stream, waits for a dial
// already in flight to the same key, or dials a new connection.
func (c *Client) Dial(ctx context.Context, target Target) (Conn, error) {
	if !target.Authority.IsValid() || !target.Addr.IsValid() {
		return nil, errors.New("hbone: target address or authority not valid")
	}
	// A connection can die between being picked and carrying the CONNECT. No payload has been
	// sent yet, so retrying on another connection is safe: at worst the server opened an upstream
	// that it closes when the dead connection's stream is reset. Bounded, as dials can keep failing.
	var err error
	for range 3 {
		var pc *pconn
		pc, err = c.acquire(ctx, target.Key)
		if err != nil {
			return nil, err
		}
		var conn Conn
		conn, err = c.open(ctx, pc, target)
		if err == nil {
			return conn, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, err
}

func retryable(err error) bool {
	var se ErrStatus
	if errors.As(err, &se) {
		return false
	}
	return errors.Is(err, errConnUnusable)
}

var errConnUnusable = errors.New("hbone: pooled connection unusable")

// open sends the CONNECT on pc, whose stream is already reserved.
func (c *Client) open(ctx context.Context, pc *pconn, target Target) (Conn, error) {
	pr, pw := io.Pipe()
	req := &http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: target.Authority.String()},
		Host:          target.Authority.String(),
		Header:        make(http.Header, 3),
		Body:          pr,
		ContentLength: -1,
	}
	if target.Forwarded != "" {
		req.Header[HeaderForwarded] = []string{target.Forwarded}
	}
	if target.Baggage != "" {
		req.Header[HeaderBaggage] = []string{target.Baggage}
	}
	if target.Traceparent != "" {
		req.Header[HeaderTraceparent] = []string{target.Traceparent}
	}
	// The stream outlives ctx, which bounds only the CONNECT exchange.
	streamCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	resp, err := pc.cc.RoundTrip(req.WithContext(streamCtx))
	stopped := stop()
	if err != nil || !stopped {
		cancel()
		pw.CloseWithError(net.ErrClosed)
		c.release(pc)
		if err == nil {
			resp.Body.Close()
			return nil, ctx.Err()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if st := pc.cc.State(); st.Closed || st.Closing {
			return nil, fmt.Errorf("%w: %w", errConnUnusable, err)
		}
		return nil, fmt.Errorf("connect %s via %s: %w", target.Authority, target.Addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		pw.CloseWithError(net.ErrClosed)
		resp.Body.Close()
		c.release(pc)
		return nil, ErrStatus{Code: resp.StatusCode}
	}
	var once sync.Once
	return &tunnel{
		body:   resp.Body,
		pw:     pw,
		local:  pc.raw.LocalAddr(),
		remote: pc.raw.RemoteAddr(),
		release: func() {
			once.Do(func() {
				cancel()
				c.release(pc)
			})
		},
	}, nil
}

// acquire returns a pooled connection with a stream reserved for the caller.
func (c *Client) acquire(ctx context.Context, key Key) (*pconn, error) {
	// A caller may need several dial rounds in a burst (each new connection takes up to
	// MaxStreamsPerConn waiters); a server that refuses streams on every new connection (GOAWAY at
	// once) must not make it dial forever.
	const maxRounds = 16
	for round := 0; ; round++ {
		if round == maxRounds {
			return nil, fmt.Errorf("%w: no stream after %d connections to %s", errConnUnusable, maxRounds, key.Addr)
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, net.ErrClosed
		}
		p := c.pools[key]
		if p == nil {
			p = &pool{}
			c.pools[key] = p
		}
		for _, pc := range p.conns {
			if pc.active < c.cfg.MaxStreamsPerConn && pc.cc.ReserveNewRequest() {
				pc.active++
				if pc.idle != nil {
					pc.idle.Stop()
					pc.idle = nil
				}
				c.mu.Unlock()
				return pc, nil
			}
		}
		call := p.dialing
		if call == nil {
			call = &dialCall{done: make(chan struct{})}
			p.dialing = call
			go c.dialShared(key, p, call)
		}
		c.mu.Unlock()
		select {
		case <-call.done:
			if call.err != nil {
				return nil, call.err
			}
			// Compete for the new connection's streams like everyone else.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// dialShared dials for everyone waiting on key. It runs detached from any one caller's context so
// that a caller giving up does not fail the others; DialTimeout bounds it.
func (c *Client) dialShared(key Key, p *pool, call *dialCall) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.DialTimeout)
	defer cancel()
	pc, err := c.dialConn(ctx, key)
	c.mu.Lock()
	p.dialing = nil
	switch {
	case err != nil:
		call.err = err
		if len(p.conns) == 0 && c.pools[key] == p {
			delete(c.pools, key)
		}
	case c.closed:
		call.err = net.ErrClosed
		pc.cc.Close()
	case pc.dead:
		call.err = fmt.Errorf("%w: closed right after dialing", errConnUnusable)
	default:
		p.conns = append(p.conns, pc)
		c.byConn[pc.cc] = pc
		c.armIdle(pc)
	}
	c.mu.Unlock()
	close(call.done)
}

func (c *Client) dialConn(ctx context.Context, key Key) (*pconn, error) {
	creds, err := c.creds(key.Src)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", key.Src, err)
	}
	tlsCfg, err := ClientTLSConfig(creds, key.Dst)
	if err != nil {
		return nil, err
	}
	raw, err := c.dial(ctx, key.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", key.Addr, err)
	}
	tc := tls.Client(raw, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", key.Addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		tc.Close()
		return nil, fmt.Errorf("tls handshake with %s: negotiated %q, want %q", key.Addr, p, ALPN)
	}
	pc := &pconn{key: key, raw: raw}
	// x/net closes the connection when it dies (read error, unanswered PING, GOAWAY done) but
	// tells its pool only seconds later for connections it never reused; watching the close
	// evicts at once.
	nc := &closeNotifyConn{Conn: tc, onClose: func() { c.evict(pc) }}
	cc, err := c.t.NewClientConn(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("http2 with %s: %w", key.Addr, err)
	}
	c.mu.Lock() // evict may already run, on x/net's read goroutine
	pc.cc = cc
	c.mu.Unlock()
	// One round trip before the connection takes tunnels: the server's SETTINGS arrive before
	// the PING's answer, so its stream limit is known before the pool counts on it (x/net assumes
	// 100 until then), and a server that rejected our certificate (TLS 1.3 tells the client only
	// after its handshake returns) fails the dial here, cleanly.
	if err := cc.Ping(ctx); err != nil {
		cc.Close()
		return nil, fmt.Errorf("http2 with %s: %w", key.Addr, err)
	}
	return pc, nil
}

// closeNotifyConn calls onClose once, when the connection is closed.
type closeNotifyConn struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *closeNotifyConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}

// evict drops a dead connection from the pool.
func (c *Client) evict(pc *pconn) {
	c.mu.Lock()
	pc.dead = true
	if pc.cc != nil && c.byConn[pc.cc] == pc {
		c.removeLocked(pc)
	}
	c.mu.Unlock()
}

// release gives back a stream of pc.
func (c *Client) release(pc *pconn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc.active--
	c.armIdle(pc)
}

// armIdle starts the idle timer of a pooled connection without tunnels. Called with c.mu held.
func (c *Client) armIdle(pc *pconn) {
	if pc.active > 0 || pc.idle != nil || c.byConn[pc.cc] != pc {
		return
	}
	pc.idle = time.AfterFunc(c.cfg.IdleTimeout, func() {
		c.mu.Lock()
		if pc.active > 0 || c.byConn[pc.cc] != pc {
			c.mu.Unlock()
			return
		}
		c.removeLocked(pc)
		c.mu.Unlock()
		pc.cc.Close()
	})
}

// removeLocked drops pc from the pool. Called with c.mu held.
func (c *Client) removeLocked(pc *pconn) {
	delete(c.byConn, pc.cc)
	if pc.idle != nil {
		pc.idle.Stop()
		pc.idle = nil
	}
	p := c.pools[pc.key]
	if p == nil {
		return
	}
	for i, x := range p.conns {
		if x == pc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	if len(p.conns) == 0 && p.dialing == nil {
		delete(c.pools, pc.key)
	}
}

// PoolStats describes the pooled connections of one key.
type PoolStats struct {
	Conns   int // open pooled connections
	Streams int // open tunnels over them
}

// Stats returns the pool state of key.
func (c *Client) Stats(key Key) PoolStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s PoolStats
	if p := c.pools[key]; p != nil {
		s.Conns = len(p.conns)
		for _, pc := range p.conns {
			s.Streams += pc.active
		}
	}
	return s
}

// Close closes every pooled connection, cutting open tunnels, and makes Dial fail. Dials in flight
// close their connection when they finish.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	var ccs []*http2.ClientConn
	for _, p := range c.pools {
		for _, pc := range p.conns {
			ccs = append(ccs, pc.cc)
		}
	}
	for _, p := range c.pools {
		for _, pc := range append([]*pconn(nil), p.conns...) {
			c.removeLocked(pc)
		}
	}
	c.mu.Unlock()
	for _, cc := range ccs {
		cc.Close()
	}
	return nil
}

// connPool receives the transport's notices that a connection died.
type connPool Client

func (p *connPool) GetClientConn(*http.Request, string) (*http2.ClientConn, error) {
	// Requests go through ClientConn.RoundTrip directly; the transport never asks.
	return nil, errors.New("hbone: no transport-level dialing")
}

func (p *connPool) MarkDead(cc *http2.ClientConn) {
	c := (*Client)(p)
	c.mu.Lock()
	pc := c.byConn[cc]
	if pc != nil {
		c.removeLocked(pc)
	}
	c.mu.Unlock()
	if pc != nil {
		c.log.Debug("pooled connection died", "dst", pc.key.Addr)
	}
}
