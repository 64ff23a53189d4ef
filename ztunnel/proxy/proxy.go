// Package proxy is ztunnel's connection handling: what happens to a connection accepted on one
// of a pod's listeners (package inpod). Outbound (:15001): the original destination from the
// redirector, the route decision, then an HBONE tunnel with the pod's certificate, or plain TCP to
// a destination outside the mesh. Inbound (:15008 HBONE, :15006 plaintext): L4 authorization of
// the peer, then a connection to the application inside the pod's namespace.
//
// It never lets a connection through on a guess: no original destination, no configuration or
// certificate within the wait bound, an unreachable waypoint, a denying policy, or inbound traffic
// to a waypoint-bound port that does not come from the waypoint all close the connection. It keeps no per-connection state beyond the connection's goroutine.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/accesslog"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"github.com/ambient-mesh/ambient/ztunnel/inpod"
	"github.com/ambient-mesh/ambient/ztunnel/route"
)

// Config is the configuration the proxy reads (the xDS state).
type Config interface {
	route.Lookup
	WorkloadByUID(uid string) *workloadv1.Workload
}

// Certs gives a pod identity's certificate, waiting (bounded by ctx) for the first one.
type Certs interface {
	Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error)
}

// OrigDst is the redirector's record of captured connections.
type OrigDst interface {
	LookupOrigDst(peer netip.AddrPort) (netip.AddrPort, error)
}

// Deps are what the proxy is built from.
type Deps struct {
	// Config returns the current configuration; nil until the first one arrived.
	Config func() Config
	// Policies returns the compiled authorization policies; nil holds none.
	Policies func() *authz.Policies
	Certs    Certs
	Roots    func() *x509.CertPool
	OrigDst  OrigDst
	// TrustDomain is used for a pod whose workload does not name one.
	TrustDomain string
	// Wait bounds how long a connection waits for its pod's configuration and certificate.
	Wait         time.Duration
	ClientConfig hbone.ClientConfig
	ServerConfig hbone.ServerConfig
	Metrics      *Metrics
	Log          *slog.Logger
	// AccessLog gets a line per connection (nil: none); see internal/logwriter.
	AccessLog *accesslog.Logger
}

// Proxy implements inpod.Handler.
type Proxy struct {
	d      Deps
	router route.Router
	mu     sync.Mutex
	// pods is keyed by the served pod itself, not its UID: a pod handed over again with a new
	// sandbox is a new *inpod.Pod, and must not find the old one's client.
	pods map[*inpod.Pod]*podSide
}

// podSide is what the proxy keeps per pod: its tunnel client (connections dialled from the pod's
// namespace, so they carry the pod's address) and its HBONE server (the pod's certificate).
type podSide struct {
	client *hbone.Client
	server *hbone.Server
}

// New returns a proxy.
func New(d Deps) *Proxy {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Wait <= 0 {
		d.Wait = 5 * time.Second
	}
	return &Proxy{d: d, pods: map[*inpod.Pod]*podSide{}}
}

// Release drops what the proxy holds for a pod that is no longer served, once its
// connections have ended (inpod.Config.OnRemoved).
func (p *Proxy) Release(pod *inpod.Pod) {
	p.mu.Lock()
	s := p.pods[pod]
	delete(p.pods, pod)
	p.mu.Unlock()
	if s != nil {
		s.client.Close()
	}
}

func (p *Proxy) identityOf(pod *inpod.Pod, w *workloadv1.Workload) identity.Identity {
	td := p.d.TrustDomain
	if w != nil && w.TrustDomain != "" {
		td = w.TrustDomain
	}
	return identity.Identity{TrustDomain: td, Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount}
}

// credentials are a pod identity's certificate and the trust bundle, fetched at each handshake.
func (p *Proxy) credentials(id identity.Identity) hbone.Credentials {
	return hbone.Credentials{
		Certificate: func() (*tls.Certificate, error) {
			ctx, cancel := context.WithTimeout(context.Background(), p.d.Wait)
			defer cancel()
			return p.d.Certs.Get(ctx, id)
		},
		Roots: p.d.Roots,
	}
}

func (p *Proxy) side(pod *inpod.Pod, id identity.Identity) (*podSide, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.pods[pod]; s != nil {
		return s, nil
	}
	if pod.Gone() {
		return nil, inpod.ErrPodGone // a draining connection of a removed pod: nothing new for it
	}
	creds := p.credentials(id)
	client, err := hbone.NewClient(p.d.ClientConfig, func(identity.Identity) (hbone.Credentials, error) { return creds, nil },
		func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) { return pod.Dial(ctx, addr) }, p.d.Log)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := hbone.ServerTLSConfig(creds)
	if err != nil {
		client.Close()
		return nil, err
	}
	server, err := hbone.NewServer(p.d.ServerConfig, tlsCfg, hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) error {
		return p.serveTunnel(ctx, pod, id, req)
	}), p.d.Log)
	if err != nil {
		client.Close()
		return nil, err
	}
	s := &podSide{client: client, server: server}
	p.pods[pod] = s
	return s, nil
}

// config waits, bounded, for a configuration that knows the pod.
func (p *Proxy) config(ctx context.Context, pod *inpod.Pod) (Config, *workloadv1.Workload, error) {
	ctx, cancel := context.WithTimeout(ctx, p.d.Wait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if c := p.d.Config(); c != nil {
			if w := c.WorkloadByUID(pod.UID); w != nil {
				return c, w, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("no configuration for pod %s yet", pod.Key())
		case <-t.C:
		}
	}
}

// Outbound carries a connection the pod made.
func (p *Proxy) Outbound(ctx context.Context, pod *inpod.Pod, c net.Conn) {
	start := time.Now()
	defer c.Close()
	rec := &record{reporter: "source", srcNS: pod.Namespace, srcWorkload: pod.Name}
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	orig, err := p.d.OrigDst.LookupOrigDst(peer)
	if err != nil {
		p.access(rec, pod, peer, netip.AddrPort{}, start, "refused", err) // never guess a destination
		return
	}
	cfg, src, err := p.config(ctx, pod)
	if err != nil {
		p.access(rec, pod, peer, orig, start, "refused", err)
		return
	}
	srcID := p.identityOf(pod, src)
	rec.srcWorkload, rec.srcPrincipal = workloadName(src), principal(srcID)
	d := p.router.Outbound(cfg, src, orig)
	if d.Workload != nil {
		rec.dstWorkload, rec.dstNS = workloadName(d.Workload), d.Workload.Namespace
	}
	if d.Service != nil {
		rec.dstService = d.Service.Hostname
	}
	var up net.Conn
	switch d.Kind {
	case route.Refuse:
		rec.flags = "UAEX"
		p.access(rec, pod, peer, orig, start, "refused", errors.New(d.Reason))
		return
	case route.Passthrough:
		rec.security = "none"
		up, err = pod.Dial(ctx, d.Dst)
	case route.Tunnel:
		rec.security, rec.dstPrincipal = "mutual_tls", principal(d.Identity)
		var s *podSide
		if s, err = p.side(pod, srcID); err == nil {
			up, err = s.client.Dial(ctx, hbone.Target{
				Key:       hbone.Key{Src: srcID, Dst: d.Identity, Addr: d.Gateway},
				Authority: d.Dst,
				Forwarded: fmt.Sprintf("for=%q", peer.String()),
			})
		}
	}
	if err != nil {
		rec.flags = "UF"
		p.access(rec, pod, peer, orig, start, "upstream failed", err)
		return
	}
	defer up.Close()
	p.d.Metrics.open(rec)
	// As Istio counts them: received is the request direction, sent the response direction.
	rec.received, rec.sent, err = hbone.Relay(c, up)
	p.d.Metrics.close(rec)
	p.access(rec, pod, peer, orig, start, "ok", err)
}

// HBONE serves tunnels to the pod.
func (p *Proxy) HBONE(ctx context.Context, pod *inpod.Pod, c net.Conn) {
	defer c.Close()
	_, w, err := p.config(ctx, pod)
	if err != nil {
		p.d.Log.Warn("inbound HBONE refused", "pod", pod.Key(), "err", err)
		return
	}
	s, err := p.side(pod, p.identityOf(pod, w))
	if err != nil {
		p.d.Log.Warn("inbound HBONE refused", "pod", pod.Key(), "err", err)
		return
	}
	// The pod's drain tells the peer at once to open new tunnels on another connection, which
	// reaches the ztunnel that serves the pod from now on (GOAWAY); open tunnels go on until ctx,
	// the drain deadline, ends.
	goAway, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-pod.Draining():
			stop()
		case <-goAway.Done():
		}
	}()
	s.server.ServeConn(goAway, c)
}

// serveTunnel checks one CONNECT to the pod, whose identity is id (the certificate the tunnel
// was accepted with), and connects it to the application.
func (p *Proxy) serveTunnel(ctx context.Context, pod *inpod.Pod, id identity.Identity, req *hbone.Request) error {
	start := time.Now()
	rec := &record{reporter: "destination", srcPrincipal: principal(req.Peer), srcNS: req.Peer.Namespace,
		dstNS: pod.Namespace, dstWorkload: pod.Name, dstPrincipal: principal(id), security: "mutual_tls"}
	peer := addrPortOf(req.RemoteAddr)
	if reservedPort(req.Authority.Port()) {
		p.access(rec, pod, peer, req.Authority, start, "bad request", fmt.Errorf("port %d is ztunnel's own", req.Authority.Port()))
		return fmt.Errorf("%w: port %d is not an application's", hbone.ErrBadRequest, req.Authority.Port())
	}
	if !slices.Contains(pod.IPs, req.Authority.Addr().Unmap()) {
		p.access(rec, pod, peer, req.Authority, start, "bad request", fmt.Errorf("authority %s is not an address of the pod", req.Authority))
		return fmt.Errorf("%w: %s is not served here", hbone.ErrBadRequest, req.Authority)
	}
	if err := p.authorize(ctx, pod, rec, peer.Addr(), req.Authority, principal(req.Peer)); err != nil {
		return err
	}
	up, err := pod.Dial(ctx, req.Authority)
	if err != nil {
		rec.flags = "UF"
		p.access(rec, pod, peer, req.Authority, start, "upstream failed", err)
		return err // 503
	}
	defer up.Close()
	tun, err := req.Accept()
	if err != nil {
		return err
	}
	defer tun.Close()
	p.d.Metrics.open(rec)
	rec.received, rec.sent, err = hbone.Relay(tun, up)
	p.d.Metrics.close(rec)
	p.access(rec, pod, peer, req.Authority, start, "ok", err)
	return nil
}

// Inbound carries a plaintext connection to the pod: no peer identity, so a STRICT pod denies it.
func (p *Proxy) Inbound(ctx context.Context, pod *inpod.Pod, c net.Conn) {
	start := time.Now()
	defer c.Close()
	rec := &record{reporter: "destination", dstNS: pod.Namespace, dstWorkload: pod.Name, security: "none"}
	peer, dst := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())
	if reservedPort(dst.Port()) {
		p.access(rec, pod, peer, dst, start, "refused", fmt.Errorf("port %d is ztunnel's own", dst.Port()))
		return
	}
	if err := p.authorize(ctx, pod, rec, peer.Addr(), dst, ""); err != nil {
		return
	}
	up, err := pod.Dial(ctx, dst)
	if err != nil {
		rec.flags = "UF"
		p.access(rec, pod, peer, dst, start, "upstream failed", err)
		return
	}
	defer up.Close()
	p.d.Metrics.open(rec)
	rec.received, rec.sent, err = hbone.Relay(c, up)
	p.d.Metrics.close(rec)
	p.access(rec, pod, peer, dst, start, "ok", err)
}

// authorize applies the pod's policies; it logs and returns hbone.ErrDenied on a denial.
func (p *Proxy) authorize(ctx context.Context, pod *inpod.Pod, rec *record, src netip.Addr, dst netip.AddrPort, principal string) error {
	start := time.Now()
	cfg, w, err := p.config(ctx, pod)
	if err != nil {
		p.access(rec, pod, netip.AddrPortFrom(src, 0), dst, start, "denied", err)
		return fmt.Errorf("%w: %v", hbone.ErrDenied, err)
	}
	rec.dstWorkload = workloadName(w)
	rec.srcWorkload = workloadName(cfg.WorkloadByAddr(src.Unmap()))
	if sw := cfg.WorkloadByAddr(src.Unmap()); sw != nil && rec.srcNS == "" {
		rec.srcNS = sw.Namespace
	}
	if wps := route.InboundWaypoints(cfg, w, dst.Port()); len(wps) > 0 && !route.FromWaypoint(cfg, wps, principal) {
		rec.flags = "RBAC"
		why := fmt.Errorf("bypasses waypoint %s: only the waypoint may connect to port %d", route.WaypointName(wps[0]), dst.Port())
		p.access(rec, pod, netip.AddrPortFrom(src, 0), dst, start, "denied", why)
		return fmt.Errorf("%w: %v", hbone.ErrDenied, why)
	}
	var pol *authz.Policies
	if p.d.Policies != nil {
		pol = p.d.Policies()
	}
	dec := pol.Check(authz.TargetOf(w), &authz.Conn{SrcIP: src, DstIP: dst.Addr(), DstPort: dst.Port(), Principal: principal})
	if !dec.Allow {
		rec.flags = "RBAC"
		p.access(rec, pod, netip.AddrPortFrom(src, 0), dst, start, "denied", fmt.Errorf("%s %s", dec.Reason, dec.Policy))
		return fmt.Errorf("%w: %s %s", hbone.ErrDenied, dec.Reason, dec.Policy)
	}
	return nil
}

// access writes the connection's access log line.
func (p *Proxy) access(r *record, pod *inpod.Pod, src, dst netip.AddrPort, start time.Time, result string, err error) {
	line := p.d.AccessLog.Line().Str("reporter", r.reporter).Str("pod", pod.Key()).Str("src", src.String()).Str("dst", dst.String()).
		Str("src_workload", r.srcWorkload).Str("src_principal", r.srcPrincipal).
		Str("dst_workload", r.dstWorkload).Str("dst_service", r.dstService).Str("dst_principal", r.dstPrincipal).
		Str("security", r.security).Int("sent", r.sent).Int("received", r.received).
		Int("duration_ms", time.Since(start).Milliseconds()).Str("result", result)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		line.Str("err", err.Error())
	}
	line.Write()
}

// reservedPort reports whether port is one of ztunnel's own in a pod (DESIGN.md §4). A
// connection "to the application" on such a port would come back into ztunnel itself: with its
// own address as the source it passes the inbound hook, so each hop would open another (a loop
// that eats the node's descriptors), and on 15001 it could take over the original destination
// of one of the pod's captured connections. Istio's ztunnel refuses them too.
func reservedPort(port uint16) bool {
	switch port {
	case mesh.PortOutbound, mesh.PortInboundPlaintext, mesh.PortHBONE, mesh.PortDNS, mesh.PortAdmin, mesh.PortMetrics, mesh.PortReadiness:
		return true
	}
	return false
}

func principal(id identity.Identity) string {
	if id.IsZero() {
		return ""
	}
	return id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

func workloadName(w *workloadv1.Workload) string {
	if w == nil {
		return ""
	}
	if w.WorkloadName != "" {
		return w.WorkloadName
	}
	return w.Name
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
