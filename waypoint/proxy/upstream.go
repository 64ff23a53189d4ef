package proxy

// Upstream: how a request or a TCP stream reaches an endpoint, and which endpoint.
//
// Rules kept here:
//   - An endpoint in the mesh is reached over HBONE to its ztunnel (podIP:15008, authority
//     podIP:targetPort), with the waypoint's certificate, verifying the endpoint's identity; one
//     outside the mesh in plain TCP. The waypoint's own pod is outside the mesh, so its sockets
//     need no mark for the redirector to leave them alone (and it holds no capability to set one).
//   - HTTP connections are pooled per endpoint by the transports (keyed by the endpoint address
//     put in the request URL), and the HBONE connections under them per endpoint by hbone.Client.
//   - The endpoint is chosen by power of two choices over peak-EWMA latency weighted by the
//     requests in flight (Linkerd's balancer): slow or loaded endpoints get less traffic.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// errNoEndpoint: the backend has no ready endpoint (503).
var errNoEndpoint = errors.New("no ready endpoint")

type upstream struct {
	client *hbone.Client
	self   identity.Identity
	h1     *http.Transport
	h2     *http.Transport // cleartext HTTP/2 with prior knowledge
	mu     sync.Mutex
	stats  map[netip.AddrPort]*epStats
	// dests maps an endpoint address to the workload reached there, for the transports' dials.
	dests sync.Map // netip.AddrPort -> *workloadv1.Workload
}

func newUpstream(c *hbone.Client, self identity.Identity) *upstream {
	u := &upstream{client: c, self: self, stats: map[netip.AddrPort]*epStats{}}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		w, ok := u.dests.Load(ap)
		if !ok {
			return nil, fmt.Errorf("%s is not a known endpoint", addr)
		}
		return u.dial(ctx, endpoint{w: w.(*workloadv1.Workload), addr: ap})
	}
	u.h1 = &http.Transport{
		DialContext:         dial,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
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
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
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

// epStats is one endpoint's load: requests in flight and peak-EWMA latency.
type epStats struct {
	mu       sync.Mutex
	pending  int
	ewma     float64 // ns
	lastSeen time.Time
}

// decay is the EWMA's time constant: a latency sample's weight halves in about 7 s.
const decay = 10 * time.Second

func (s *epStats) cost(now time.Time) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.decayed(now)
	if e == 0 && s.pending > 0 {
		// No latency measured yet but busy: prefer an idle endpoint.
		return float64(s.pending) * 1e6
	}
	return e * float64(s.pending+1)
}

func (s *epStats) decayed(now time.Time) float64 {
	if s.lastSeen.IsZero() {
		return 0
	}
	return s.ewma * math.Exp(-float64(now.Sub(s.lastSeen))/float64(decay))
}

func (s *epStats) observe(now time.Time, rtt time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.decayed(now)
	if r := float64(rtt); r > e {
		s.ewma = r // peak: a slower response is believed at once
	} else {
		w := math.Exp(-float64(now.Sub(s.lastSeen)) / float64(decay))
		s.ewma = e*w + r*(1-w)
	}
	s.lastSeen = now
}

func (u *upstream) statsOf(a netip.AddrPort) *epStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.stats[a]
	if s == nil {
		s = &epStats{}
		u.stats[a] = s
	}
	return s
}

// pick chooses an endpoint of service key's port, other than those tried (a retry goes to
// another endpoint when there is one, as Envoy's previous-hosts predicate does), and counts a
// request in flight on it; release ends the request.
func (u *upstream) pick(v *view, key string, port uint16, tried []netip.AddrPort) (endpoint, func(), error) {
	eps := v.ready(key, port, true)
	if len(eps) == 0 {
		eps = v.ready(key, port, false)
	}
	if len(eps) == 0 {
		return endpoint{}, nil, fmt.Errorf("%w for %s port %d", errNoEndpoint, key, port)
	}
	if len(tried) > 0 {
		fresh := slices.DeleteFunc(slices.Clone(eps), func(e endpoint) bool { return slices.Contains(tried, e.addr) })
		if len(fresh) > 0 {
			eps = fresh
		}
	}
	now := time.Now()
	ep := eps[0]
	if len(eps) > 1 {
		i := rand.IntN(len(eps))
		j := rand.IntN(len(eps) - 1)
		if j >= i {
			j++
		}
		a, b := eps[i], eps[j]
		if u.statsOf(b.addr).cost(now) < u.statsOf(a.addr).cost(now) {
			a = b
		}
		ep = a
	}
	u.dests.Store(ep.addr, ep.w)
	s := u.statsOf(ep.addr)
	s.mu.Lock()
	s.pending++
	s.mu.Unlock()
	start := time.Now()
	var once sync.Once
	return ep, func() {
		once.Do(func() {
			end := time.Now()
			s.observe(end, end.Sub(start))
			s.mu.Lock()
			s.pending--
			s.mu.Unlock()
		})
	}, nil
}
