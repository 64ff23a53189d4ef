package server

import (
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// peerListener accepts at most max connections at a time from one peer address: a client that
// opens connection after connection (with junk tokens, or none) cannot take the file descriptors,
// TLS handshakes and streams that other proxies need. A connection over the limit is closed as
// soon as it is accepted, before its TLS handshake costs anything; its client retries with backoff.
type peerListener struct {
	net.Listener
	max     int
	refused prometheus.Counter

	mu    sync.Mutex
	conns map[string]int
}

func newPeerListener(l net.Listener, max int, reg prometheus.Registerer) *peerListener {
	p := &peerListener{Listener: l, max: max, conns: map[string]int{},
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "istiod_lite_grpc_connections_refused_total",
			Help: "Connections to the xDS and CA port closed at once: their peer address already had the most allowed.",
		})}
	reg.MustRegister(p.refused)
	return p
}

func (p *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		p.mu.Lock()
		if p.conns[host] >= p.max {
			p.mu.Unlock()
			p.refused.Inc()
			_ = c.Close()
			continue
		}
		p.conns[host]++
		p.mu.Unlock()
		return &peerConn{Conn: c, release: func() { p.release(host) }}, nil
	}
}

func (p *peerListener) release(host string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[host]--; p.conns[host] <= 0 {
		delete(p.conns, host)
	}
}

// peerConn gives its peer's slot back when closed, once.
type peerConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
