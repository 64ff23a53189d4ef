package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

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

	mu     sync.Mutex
	pools  map[Key]*pool
	byConn map[*h2conn]*pconn
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
	cc     *h2conn
	active int
	idle   *time.Timer
	dead   bool // closed; guarded by Client.mu
	// refused: the server refused a stream (its MAX_CONCURRENT_STREAMS was reached: it counts
	// a stream until its handler returns, which is after our Close). Not picked again until
	// one of its streams ends; guarded by Client.mu.
	refused bool
	// authUntil is when the first certificate of the two its handshake presented expires (ours
	// or the peer's). TLS checks validity only then, so the pool does: no new tunnel rides a
	// connection whose authentication has expired; a fresh handshake takes the renewed
	// certificates. Its open tunnels run on.
	authUntil time.Time
	now       func() time.Time
}

// expired reports whether pc's handshake certificates have expired.
func (pc *pconn) expired() bool { return !pc.authUntil.IsZero() && pc.now().After(pc.authUntil) }

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
		pools: map[Key]*pool{}, byConn: map[*h2conn]*pconn{},
	}
	return c, nil
}

// Dial opens a tunnel to target. It reuses a pooled connection with a free stream, waits for a dial
// already in flight to the same key, or dials a new connection.
func (c *Client) Dial(ctx context.Context, target Target) (Conn, error) {
	if !target.Authority.IsValid() || !target.Addr.IsValid() {
		return nil, errors.New("hbone: target address or authority not valid")
	}
	if err := ctx.Err(); err != nil {
		return nil, err // before starting a dial nobody waits for
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
	fields := make([]hpack.HeaderField, 0, 5)
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: target.Authority.String()})
	if target.Forwarded != "" {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: target.Forwarded})
	}
	if target.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: "baggage", Value: target.Baggage})
	}
	if target.Traceparent != "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: target.Traceparent})
	}
	st, err := pc.cc.openStream(ctx, fields)
	if err != nil {
		if errors.Is(err, errRefused) {
			c.releaseRefused(pc)
		} else {
			c.release(pc)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, errConnUnusable) {
			return nil, err
		}
		return nil, fmt.Errorf("connect %s via %s: %w", target.Authority, target.Addr, err)
	}
	if st.status != http.StatusOK {
		st.Close()
		c.release(pc)
		return nil, ErrStatus{Code: st.status}
	}
	st.onClose = func() { c.release(pc) }
	return st, nil
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
		var picked *pconn
		var spent []*pconn
		for _, pc := range p.conns {
			ok, limit, exhausted := pc.cc.usable()
			if exhausted || pc.expired() {
				spent = append(spent, pc)
				continue
			}
			if ok && !pc.refused && pc.active < c.cfg.MaxStreamsPerConn && uint32(pc.active) < limit {
				picked = pc
				break
			}
		}
		for _, pc := range spent {
			// Out of stream IDs or authentication: it leaves the pool now and closes when its
			// tunnels end.
			c.removeLocked(pc)
		}
		if picked != nil {
			picked.active++
			if picked.idle != nil {
				picked.idle.Stop()
				picked.idle = nil
			}
		}
		if picked != nil || len(spent) > 0 {
			c.mu.Unlock()
			for _, pc := range spent {
				pc.cc.shutdown() // without c.mu: it calls onGone
			}
			if picked != nil {
				return picked, nil
			}
			continue // look again, with the spent connections gone
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
	var discard *h2conn
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
		// Closed below, without c.mu: closing calls onGone, which takes it.
		discard = pc.cc
	case pc.dead:
		call.err = fmt.Errorf("%w: closed right after dialing", errConnUnusable)
	default:
		p.conns = append(p.conns, pc)
		c.byConn[pc.cc] = pc
		c.armIdle(pc)
	}
	c.mu.Unlock()
	if discard != nil {
		discard.close()
	}
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
	var ours time.Time // our leaf's expiry, as presented in this handshake
	getCert := tlsCfg.GetClientCertificate
	tlsCfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, err := getCert(cri)
		if err == nil {
			ours = leafNotAfter(cert)
		}
		return cert, err
	}
	raw, err := c.dial(ctx, key.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", key.Addr, err)
	}
	cork := newCorkConn(raw)
	tc := tls.Client(cork, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", key.Addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		tc.Close()
		return nil, fmt.Errorf("tls handshake with %s: negotiated %q, want %q", key.Addr, p, ALPN)
	}
	hc := newH2Conn(tc, cork, false, c.cfg.FlowConfig)
	pc := &pconn{key: key, cc: hc, now: creds.now, authUntil: ours}
	if peer := tc.ConnectionState().PeerCertificates; len(peer) > 0 && (pc.authUntil.IsZero() || peer[0].NotAfter.Before(pc.authUntil)) {
		pc.authUntil = peer[0].NotAfter
	}
	// A connection that stops taking streams (GOAWAY, closed, unanswered PING) leaves the pool
	// at once; its open tunnels run on until they end.
	hc.onGone = func() { c.evict(pc) }
	if err := hc.start(time.Time{}); err != nil {
		hc.close()
		return nil, fmt.Errorf("http2 with %s: %w", key.Addr, err)
	}
	go hc.readLoop()
	// The server's SETTINGS before the connection takes tunnels: its stream limit is known
	// before the pool counts on it, and a server that rejected our certificate (TLS 1.3 tells
	// the client only after its handshake returns) fails the dial here, cleanly.
	if err := hc.waitSettings(ctx.Done()); err != nil {
		hc.close()
		return nil, fmt.Errorf("http2 with %s: %w", key.Addr, err)
	}
	return pc, nil
}

// leafNotAfter is the expiry of cert's leaf; zero when it cannot be read (the handshake then
// fails on it anyway).
func leafNotAfter(cert *tls.Certificate) time.Time {
	if cert == nil || len(cert.Certificate) == 0 {
		return time.Time{}
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return time.Time{}
		}
	}
	return leaf.NotAfter
}

// evict drops a dead connection from the pool.
func (c *Client) evict(pc *pconn) {
	c.mu.Lock()
	pc.dead = true
	if c.byConn[pc.cc] == pc {
		c.removeLocked(pc)
	}
	c.mu.Unlock()
}

// release gives back a stream of pc.
func (c *Client) release(pc *pconn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc.active--
	pc.refused = false
	c.armIdle(pc)
}

// releaseRefused gives back the stream of pc that the server refused.
func (c *Client) releaseRefused(pc *pconn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc.active--
	pc.refused = true
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
		pc.cc.shutdown()
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
	var ccs []*h2conn
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
		cc.close()
	}
	return nil
}

// openStream sends a CONNECT and waits for the response HEADERS. An error wrapping
// errConnUnusable means the server did not process the request, so another connection may.
func (c *h2conn) openStream(ctx context.Context, fields []hpack.HeaderField) (*stream, error) {
	// Stream IDs must reach the wire in increasing order: take one under the write lock. A writer
	// stuck on a peer that stopped reading holds it until the write watchdog ends the connection:
	// the caller's ctx bounds the wait.
	if err := c.lockWriteUnless(false, ctx.Err, ctx.Done()); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errConnUnusable, err)
	}
	c.mu.Lock()
	if c.err != nil || c.goAwayRecv || c.goAwaySent || c.nextID > maxStreamID {
		c.mu.Unlock()
		c.endWrite(nil)
		return nil, errConnUnusable
	}
	s := c.newStreamLocked(c.nextID)
	c.nextID += 2
	c.mu.Unlock()
	if err := c.endWrite(c.writeHeadersLocked(s.id, fields, false)); err != nil {
		return nil, fmt.Errorf("%w: %w", errConnUnusable, err)
	}
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		s.rcond.Broadcast()
		c.interruptLocked(s)
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	for s.status == 0 && s.rerr == nil && ctx.Err() == nil {
		if c.err != nil {
			s.failLocked(c.err)
			break
		}
		if c.tHeld {
			c.waitTurnLocked(s)
			continue
		}
		c.takeTokenLocked(s, false)
		err := c.readFramesLocked(func() bool { return s.status != 0 || s.rerr != nil || ctx.Err() != nil })
		c.releaseTokenLocked(true)
		if err != nil {
			c.mu.Unlock()
			c.readFailed(err)
			c.mu.Lock()
		}
	}
	var err error
	switch {
	case s.status != 0:
	case s.rerr != nil:
		err = s.rerr
		if !errors.Is(err, errConnUnusable) && errors.Is(err, errConnGone) {
			// The connection died before the answer: the server never opened the tunnel,
			// or it closes its upstream with the connection.
			err = fmt.Errorf("%w: %w", errConnUnusable, err)
		}
	default:
		err = ctx.Err()
		c.resetLocked(s, http2.ErrCodeCancel, err, true)
	}
	c.mu.Unlock()
	c.flushCtrl()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// clientHeaders handles a response HEADERS on the reader goroutine.
func (c *h2conn) clientHeaders(f *http2.MetaHeadersFrame) error {
	c.mu.Lock()
	defer c.flushCtrlAsync()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if c.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream we reset
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if s.status != 0 || f.Truncated || err != nil || status < 100 || status > 999 {
		// A second HEADERS (CONNECT streams carry only DATA, RFC 9113 §8.5), or no valid status.
		c.resetLocked(s, http2.ErrCodeProtocol, resetError{http2.ErrCodeProtocol}, true)
		return nil
	}
	if status < 200 {
		if f.StreamEnded() {
			c.resetLocked(s, http2.ErrCodeProtocol, resetError{http2.ErrCodeProtocol}, true)
		}
		return nil // informational; the final answer follows
	}
	s.status = status
	// A tunnel reads next: leave the socket to it rather than to readLoop.
	c.deliveredData = status == 200
	c.wakeLocked(s)
	if f.StreamEnded() {
		c.endRecvLocked(s)
	}
	return nil
}
