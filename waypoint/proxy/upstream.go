package proxy

// Upstream: how a request or a TCP stream reaches an endpoint, and which endpoint.
//
// Rules kept here:
//   - An endpoint in the mesh is reached over HBONE to its ztunnel (podIP:15008, authority
//     podIP:targetPort), with the waypoint's certificate, verifying the endpoint's identity; one
//     outside the mesh in plain TCP. The waypoint's own pod is outside the mesh, so its sockets
//     need no mark for the redirector to leave them alone (and it holds no capability to set one).
//   - HTTP connections are pooled per endpoint by the transports (keyed by the endpoint address
//     put in the request URL): HTTP/1.1 by h1Transport (h1.go), cleartext HTTP/2 by net/http's;
//     the HBONE connections under them per endpoint by hbone.Client.
//   - The endpoint is chosen by the Service's balancer (waypoint/lb: by default power of two
//     choices over peak-EWMA latency, or its DestinationRule's), which also ejects outliers.
//   - A DestinationRule's connection pool bounds requests in flight per Service (503 beyond
//     them and the pending ones) and connections per endpoint (a transport of its own).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/mesh"
	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/waypoint/lb"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// errNoEndpoint: the backend has no ready endpoint (503).
var errNoEndpoint = errors.New("no ready endpoint")

type upstream struct {
	client     *hbone.Client
	self       identity.Identity
	h1         *h1Transport
	h2         *http.Transport // cleartext HTTP/2 with prior knowledge
	mu         sync.Mutex
	balancers  map[string]*lb.Balancer // by service
	limiters   map[string]*limiter     // by service
	transports map[transportKey]transport
}

// transport is an HTTP client of upstream requests.
type transport interface {
	http.RoundTripper
	CloseIdleConnections()
}

// newUpstream returns the upstream side; workload finds the workload at an address in the current
// configuration, for the transports' dials (the request URL carries only the endpoint address).
func newUpstream(c *hbone.Client, self identity.Identity, workload func(netip.Addr) *workloadv1.Workload) *upstream {
	u := &upstream{client: c, self: self, balancers: map[string]*lb.Balancer{}, limiters: map[string]*limiter{},
		transports: map[transportKey]transport{}}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		w := workload(ap.Addr())
		if w == nil {
			return nil, fmt.Errorf("%s is not a known endpoint", addr)
		}
		return u.dial(ctx, endpoint{w: w, addr: ap})
	}
	u.h1 = newH1Transport(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) })
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	u.h2 = &http.Transport{
		DialContext: dial,
		Protocols:   &h2c,
		HTTP2:       &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 15 * time.Second},
	}
	return u
}

func (u *upstream) close() {
	u.h1.close()
	u.h2.CloseIdleConnections()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, t := range u.transports {
		t.CloseIdleConnections()
	}
}

// dial opens a connection to an endpoint: HBONE to its ztunnel, or plain TCP.
func (u *upstream) dial(ctx context.Context, ep endpoint) (net.Conn, error) {
	w := ep.w
	if w.TunnelProtocol != workloadv1.TunnelProtocol_HBONE {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ep.addr.String())
	}
	dst := identity.Identity{TrustDomain: w.TrustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
	return u.client.Dial(ctx, hbone.Target{
		Key:       hbone.Key{Src: u.self, Dst: dst, Addr: netip.AddrPortFrom(ep.addr.Addr(), mesh.PortHBONE)},
		Authority: ep.addr,
	})
}

// balancer returns service key's balancer, with the policy of its ServiceRoutes.
func (u *upstream) balancer(v *view, key string) *lb.Balancer {
	policy := v.st.Routes(key).GetTrafficPolicy()
	u.mu.Lock()
	defer u.mu.Unlock()
	b := u.balancers[key]
	if b == nil {
		b = lb.New(policy, nil)
		u.balancers[key] = b
	} else if b.Policy() != policy {
		b.SetPolicy(policy)
	}
	return b
}

// pick chooses an endpoint of service key's port, other than those tried when it can (a retry
// goes elsewhere, as Envoy's previous-hosts predicate does), with the Service's balancer; done
// reports the attempt's status (0: it failed without one).
func (u *upstream) pick(v *view, key string, port uint16, tried []netip.AddrPort, hashKey string) (endpoint, func(status int), error) {
	eps := v.ready(key, port, true)
	if len(eps) == 0 {
		eps = v.ready(key, port, false)
	}
	if len(eps) == 0 {
		return endpoint{}, nil, fmt.Errorf("%w for %s port %d", errNoEndpoint, key, port)
	}
	addrs := make([]netip.AddrPort, len(eps))
	for i, e := range eps {
		addrs[i] = e.addr
	}
	i, done := u.balancer(v, key).Pick(addrs, hashKey, tried)
	return eps[i], done, nil
}

// errOverflow: the Service's connection pool is full (503, flag UO).
var errOverflow = errors.New("connection pool overflow")

// limiter bounds the requests in flight to one Service (http2MaxRequests) and those waiting for
// a slot (maxPendingRequests).
type limiter struct {
	slots   chan struct{}
	pending atomic.Int32
	max     uint32
}

func (u *upstream) limiter(key string, p *routev1.TrafficPolicy) *limiter {
	n := p.GetHttp2MaxRequests()
	if n == 0 {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	l := u.limiters[key]
	if l == nil || cap(l.slots) != int(n) {
		l = &limiter{slots: make(chan struct{}, n)}
		u.limiters[key] = l
	}
	l.max = p.GetMaxPendingRequests()
	return l
}

// acquire takes a slot, waiting while fewer than max requests wait; release gives it back.
func (l *limiter) acquire(ctx context.Context) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	release = func() { <-l.slots }
	select {
	case l.slots <- struct{}{}:
		return release, nil
	default:
	}
	if uint32(l.pending.Add(1)) > l.max {
		l.pending.Add(-1)
		return nil, errOverflow
	}
	defer l.pending.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// transport returns the HTTP transport for a Service's requests: shared, or one of its own when
// its DestinationRule bounds connections per endpoint (maxConnections).
func (u *upstream) transport(key string, h2 bool, p *routev1.TrafficPolicy) http.RoundTripper {
	maxConns := p.GetMaxConnections()
	if maxConns == 0 {
		if h2 {
			return u.h2
		}
		return u.h1
	}
	k := transportKey{key, h2, maxConns}
	u.mu.Lock()
	defer u.mu.Unlock()
	if t := u.transports[k]; t != nil {
		return t
	}
	var t transport
	if h2 {
		c := u.h2.Clone()
		c.MaxConnsPerHost = int(maxConns)
		t = c
	} else {
		t = u.h1.clone(int(maxConns))
	}
	u.transports[k] = t
	return t
}

type transportKey struct {
	service  string
	h2       bool
	maxConns uint32
}
