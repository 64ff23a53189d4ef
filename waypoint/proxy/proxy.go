// Package proxy is the waypoint's request handling. Each HBONE tunnel that a ztunnel opens to the
// waypoint names, in its authority, the Service VIP:port the client asked for; the tunnel's
// certificate names the client. The waypoint takes the tunnel only for a Service bound to it,
// finds the port's protocol (configured, or sniffed from the first bytes), and then:
//
//   - HTTP/1.1 and cleartext HTTP/2 (gRPC): parses requests, applies the Service's routes (match,
//     filters, weighted backends, timeouts, retries), picks an endpoint of the chosen backend and
//     sends the request on over HBONE to that endpoint's ztunnel, over pooled connections;
//   - anything else: passes the bytes through to one endpoint of the Service, over HBONE.
//
// It never sends a request around policy: no configuration, an unknown Service, a route that
// cannot be applied or a backend without endpoints answer an error, never a guess.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ambient-mesh/ambient/api/identity"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/accesslog"
	"github.com/ambient-mesh/ambient/waypoint/authz"
	"github.com/ambient-mesh/ambient/waypoint/jwt"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// Deps are what the proxy is built from.
type Deps struct {
	Store *xdsclient.Store
	// Self is the waypoint's identity; Gateway its Gateway, "<namespace>/<name>".
	Self    identity.Identity
	Gateway string
	// Client opens the upstream tunnels (the waypoint's certificate).
	Client  *hbone.Client
	Metrics *Metrics
	Log     *slog.Logger
	// AccessLog gets a line per request and per TCP stream (nil: none). Give it a batching
	// writer (internal/logwriter): a write system call per line costs more than the line.
	AccessLog *accesslog.Logger
	// Now is the clock of the access log, metrics and JWT validity.
	Now func() time.Time
	// Keys fetches and caches the JWKS of RequestAuthentications (nil: one of its own).
	Keys *jwt.KeySource
	// Tracer makes each request's span (nil: no spans; trace context passes through).
	Tracer trace.Tracer
	// SniffTimeout bounds protocol detection on ports that declare no protocol (0:
	// DefaultSniffTimeout).
	SniffTimeout time.Duration
}

// Proxy serves the tunnels of one waypoint; it implements hbone.Handler.
type Proxy struct {
	d   Deps
	cur *current
	up  *upstream
	// sniffLogged holds the Service ports ("key:port") and workload keys whose detection timeout
	// was logged.
	sniffLogged sync.Map
}

// New returns a proxy.
func New(d Deps) *Proxy {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.SniffTimeout <= 0 {
		d.SniffTimeout = DefaultSniffTimeout
	}
	if d.Keys == nil {
		d.Keys = jwt.NewKeySource(nil, d.Now, d.Log)
	}
	p := &Proxy{d: d, cur: &current{store: d.Store, keys: d.Keys}}
	p.up = newUpstream(d.Client, d.Self, func(a netip.Addr) *workloadv1.Workload { return p.cur.get().st.WorkloadByAddr(a) })
	return p
}

// Close releases the upstream connections.
func (p *Proxy) Close() { p.up.close() }

// tunnel is what a tunnel tells about its requests' origin and destination.
type tunnel struct {
	// svc is the Service asked for; nil for a tunnel addressed to a workload (dst).
	svc *workloadv1.Service
	dst *workloadv1.Workload
	// key names the ServiceRoutes whose routes and policies apply: the Service's, or for a
	// workload the waypoint's own (the policies that target the waypoint).
	key    string
	addr   netip.AddrPort // the authority: Service VIP or workload address, and port
	port   uint16
	peer   identity.Identity
	srcIP  netip.Addr
	srcW   *workloadv1.Workload
	accept time.Time
}

// ServeHBONE takes one tunnel.
func (p *Proxy) ServeHBONE(ctx context.Context, req *hbone.Request) error {
	v := p.cur.get()
	auth := netip.AddrPortFrom(req.Authority.Addr().Unmap(), req.Authority.Port())
	t, err := p.resolve(v, auth)
	if err != nil {
		p.d.Log.Info("tunnel refused", "authority", auth.String(), "peer", req.Peer.String(), "err", err.Error())
		return fmt.Errorf("%w: %w", hbone.ErrBadRequest, err)
	}
	t.peer, t.accept = req.Peer, p.d.Now()
	t.srcIP = forwardedFor(req.Forwarded)
	if t.srcIP.IsValid() {
		t.srcW = v.st.WorkloadByAddr(t.srcIP)
	}
	proto := v.protocol(t)
	conn, err := req.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 4096)
	c := &bufConn{Conn: conn, r: br}
	if proto == "" {
		proto, c.pending = sniffWithin(ctx, br, p.d.SniffTimeout)
		switch {
		case proto == "":
			return nil // the tunnel or the waypoint is ending
		case proto == sniffPartial:
			p.sniffTimedOut(t, "the client sent the start of what could be an HTTP request, then nothing, so the tunnel is closed")
			return nil
		case c.pending != nil:
			c.checkLate = true
			p.sniffTimedOut(t, "the client sent nothing, so the tunnel is passed through as TCP, late")
		}
	}
	if proto == "http" || proto == "http2" {
		// One server for both: it tells HTTP/2 by its preface.
		p.serveHTTP(ctx, newSoftDeadlines(c), t)
		return nil
	}
	p.serveTCP(ctx, c, t)
	return nil
}

// resolve finds what a tunnel's authority names: a Service bound to this waypoint (its VIP), or
// a workload bound to it (its address). Anything else is refused.
func (p *Proxy) resolve(v *view, auth netip.AddrPort) (*tunnel, error) {
	t := &tunnel{addr: auth, port: auth.Port()}
	if svc := v.st.ServiceByVIP(auth); svc != nil {
		if !p.mine(svc.GetWaypoint()) {
			return nil, fmt.Errorf("service %s/%s is not bound to waypoint %s", svc.Namespace, svc.Name, p.d.Gateway)
		}
		t.svc, t.key = svc, svc.Namespace+"/"+svc.Hostname
		return t, nil
	}
	w := v.st.WorkloadByAddr(auth.Addr())
	if w == nil || !p.mine(w.GetWaypoint()) {
		return nil, fmt.Errorf("%s is not a Service or workload bound to waypoint %s", auth, p.d.Gateway)
	}
	h := w.GetWaypoint().GetHostname()
	t.dst, t.key = w, h.Namespace+"/"+h.Hostname
	return t, nil
}

// mine reports whether a Service's or workload's waypoint is this one: the Service of this
// waypoint's Gateway.
func (p *Proxy) mine(wp *workloadv1.GatewayAddress) bool {
	h := wp.GetHostname()
	if h == nil {
		return false
	}
	ns, name, _ := strings.Cut(p.d.Gateway, "/")
	return h.Namespace == ns && strings.HasPrefix(h.Hostname, name+"."+ns+".svc.")
}

// bufConn is the tunnel with what sniffing read put back in front.
type bufConn struct {
	hbone.Conn
	r *bufio.Reader
	// pending, when detection timed out, is closed once its read has returned; with checkLate
	// (passed through as TCP), what that read brought must be plainly not HTTP.
	pending   <-chan struct{}
	checkLate bool
}

func (c *bufConn) Read(b []byte) (int, error) {
	if c.pending != nil {
		<-c.pending
		c.pending = nil
		if c.checkLate {
			if err := lateBytes(c.r); err != nil {
				return 0, err
			}
		}
	}
	return c.r.Read(b)
}

// sniffTimedOut logs the first tunnel of each Service port (each workload, for tunnels addressed
// to one) whose client said nothing decisive before the detection timeout, with what became of
// it: a protocol in which the server speaks first, or whose first message looks like the start
// of a request, which its port's appProtocol should name.
func (p *Proxy) sniffTimedOut(t *tunnel, what string) {
	key := t.key
	if t.svc != nil {
		key = fmt.Sprintf("%s:%d", t.key, t.port)
	}
	if _, seen := p.sniffLogged.LoadOrStore(key, true); seen {
		return
	}
	p.d.Log.Warn("protocol detection timed out: "+what+"; a port whose protocol is not HTTP needs appProtocol: tcp",
		"service", t.key, "port", t.port, "peer", t.peer.String(), "timeout", p.d.SniffTimeout.String())
}

// forwardedFor returns the address in a Forwarded header's for= parameter.
func forwardedFor(h string) netip.Addr {
	for _, part := range strings.Split(h, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		v = strings.Trim(v, `"`)
		if ap, err := netip.ParseAddrPort(v); err == nil {
			return ap.Addr().Unmap()
		}
		if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// serveTCP passes a tunnel's bytes through to one endpoint of the Service.
func (p *Proxy) serveTCP(ctx context.Context, c *bufConn, t *tunnel) {
	v := p.cur.get()
	key := t.key
	rec := p.newRecord(t)
	// L4 policy: the Service's policies on what a TCP stream has (the client's identity,
	// namespace and address, the port). A rule that names HTTP attributes denies without them
	// (DENY) or never allows (ALLOW): waypoint/authz.
	if sr := v.st.Routes(key); sr != nil && len(sr.Policies) > 0 {
		d := authz.Check(sr.Policies, &authz.Request{Principal: rec.srcPrincipal, Namespace: rec.srcNS,
			SourceIP: t.srcIP, RemoteIP: t.srcIP, Port: t.port, TCP: true})
		if !d.Allow {
			p.d.AccessLog.Line().Str("protocol", "tcp").Str("service", key).Str("peer", t.peer.String()).Str("result", "denied").
				Str("policy", d.Policy).Str("err", d.Reason).Write()
			return
		}
	}
	ep, report, err := endpoint{w: t.dst, addr: t.addr}, func(int) {}, error(nil)
	if t.dst == nil {
		ep, report, err = p.up.pick(v, key, t.port, nil, "")
	}
	if err != nil {
		p.d.AccessLog.Line().Str("protocol", "tcp").Str("service", key).Str("peer", t.peer.String()).Str("result", "no endpoint").
			Str("err", err.Error()).Write()
		return
	}
	up, err := p.up.dial(ctx, ep)
	if err != nil {
		report(0)
		p.d.AccessLog.Line().Str("protocol", "tcp").Str("service", key).Str("peer", t.peer.String()).Str("dst", ep.addr.String()).
			Str("result", "upstream failed").Str("err", err.Error()).Write()
		return
	}
	defer up.Close()
	defer report(200) // connected: for the balancer, a success
	rec.dstWorkload, rec.dstNS = workloadName(ep.w), ep.w.Namespace
	received, sent, err := hbone.Relay(c, up)
	line := p.d.AccessLog.Line().Str("protocol", "tcp").Str("service", key).Str("peer", t.peer.String()).Str("dst", ep.addr.String()).
		Int("received", received).Int("sent", sent).Int("duration_ms", p.d.Now().Sub(t.accept).Milliseconds()).Str("result", "ok")
	if err != nil && !errors.Is(err, net.ErrClosed) {
		line.Str("err", err.Error())
	}
	line.Write()
}
