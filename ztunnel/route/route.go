// Package route decides where ztunnel sends an outbound connection it captured: the pure part of
// the outbound path, from the original destination and the pushed configuration to one of
// "tunnel to this pod over HBONE, expecting this identity", "pass through in plain TCP" (a
// destination outside the mesh) or "refuse". Service addresses pick one ready endpoint, round
// robin, preferring the source's locality.
//
// It does no I/O and keeps no per-connection state; it must never turn a destination that the
// configuration puts in the mesh (or behind a waypoint) into a plain-TCP one: when in doubt it
// refuses.
package route

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Kind is the way a connection leaves.
type Kind uint8

const (
	// Refuse: the connection is closed; Reason says why.
	Refuse Kind = iota
	// Passthrough: plain TCP to Dst (a destination outside the mesh).
	Passthrough
	// Tunnel: HBONE to Gateway with :authority Dst, the peer verified as Identity.
	Tunnel
)

func (k Kind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case Tunnel:
		return "hbone"
	}
	return "refuse"
}

// Decision is where one connection goes.
type Decision struct {
	Kind Kind
	// Dst is the address the connection is for: the chosen endpoint's address and target port
	// for a Service, the original destination otherwise.
	Dst netip.AddrPort
	// Gateway is where the tunnel connects: the destination pod's HBONE port, or its waypoint's.
	Gateway netip.AddrPort
	// Waypoint is the waypoint the tunnel goes through (Workload is then the waypoint's pod).
	Waypoint *workloadv1.Service
	// Identity is what the tunnel's peer must prove.
	Identity identity.Identity
	// Workload is the destination workload, when the configuration knows it.
	Workload *workloadv1.Workload
	// Service is the Service the original destination addressed, if any.
	Service *workloadv1.Service
	// Reason explains a refusal, for the access log.
	Reason string
}

// Lookup is what the decision reads of the pushed configuration.
type Lookup interface {
	// WorkloadByAddr returns the workload that has the address, or nil.
	WorkloadByAddr(netip.Addr) *workloadv1.Workload
	// ServiceByAddr returns the Service with the address and port, or nil.
	ServiceByAddr(netip.AddrPort) *workloadv1.Service
	// Endpoints returns the workloads that serve the Service (Workload.services has its key,
	// "<namespace>/<hostname>").
	Endpoints(key string) []*workloadv1.Workload
	// ServiceByName returns the Service named "<namespace>/<hostname>", or nil.
	ServiceByName(key string) *workloadv1.Service
}

// Router makes decisions; it holds the round-robin position of each Service. Safe for
// concurrent use.
type Router struct {
	rr sync.Map // service key -> *atomic.Uint64
}

// ServiceKey is the key of a Service in Workload.services.
func ServiceKey(s *workloadv1.Service) string { return s.Namespace + "/" + s.Hostname }

// Outbound decides for a connection from src (the enrolled pod that opened it) to orig.
func (r *Router) Outbound(l Lookup, src *workloadv1.Workload, orig netip.AddrPort) Decision {
	orig = netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
	if svc := l.ServiceByAddr(orig); svc != nil {
		return r.viaService(l, src, svc, orig)
	}
	w := l.WorkloadByAddr(orig.Addr())
	if w == nil {
		return Decision{Kind: Passthrough, Dst: orig} // not in the configuration: outside the mesh
	}
	if w.Waypoint != nil {
		return r.viaWaypoint(l, w.Waypoint, orig, nil)
	}
	return toWorkload(w, orig, nil)
}

// viaWaypoint sends a connection for orig (a Service's address, or a bound workload's) to the
// waypoint g over HBONE, with orig as the authority: the waypoint routes it on. A waypoint that
// cannot be reached refuses the connection: it never goes around the waypoint.
func (r *Router) viaWaypoint(l Lookup, g *workloadv1.GatewayAddress, orig netip.AddrPort, svc *workloadv1.Service) Decision {
	port := uint16(g.GetHboneMtlsPort())
	if port == 0 {
		port = mesh.PortHBONE
	}
	refuse := func(why string) Decision {
		return Decision{Kind: Refuse, Service: svc, Reason: fmt.Sprintf("%s is bound to waypoint %s, which %s", dstName(svc, orig), WaypointName(g), why)}
	}
	var pods []*workloadv1.Workload
	if h := g.GetHostname(); h != nil {
		key := h.GetNamespace() + "/" + h.GetHostname()
		for _, w := range l.Endpoints(key) {
			if w.Status == workloadv1.WorkloadStatus_HEALTHY {
				pods = append(pods, w)
			}
		}
		if len(pods) == 0 {
			return refuse("has no ready pod")
		}
		ctr, _ := r.rr.LoadOrStore("waypoint:"+key, new(atomic.Uint64))
		pods = pods[(ctr.(*atomic.Uint64).Add(1)-1)%uint64(len(pods)):][:1]
	} else if a, ok := netip.AddrFromSlice(g.GetAddress()); ok {
		w := l.WorkloadByAddr(a.Unmap())
		if w == nil {
			return refuse("is not a known workload")
		}
		pods = []*workloadv1.Workload{w}
	} else {
		return refuse("has no address")
	}
	wp := pods[0]
	addr, ok := addrOfFamily(wp, orig.Addr().Is4())
	if !ok {
		return refuse(fmt.Sprintf("has no address of the family of %s", orig.Addr()))
	}
	id := identity.Identity{TrustDomain: wp.TrustDomain, Namespace: wp.Namespace, ServiceAccount: wp.ServiceAccount}
	if err := id.Validate(); err != nil {
		return refuse(fmt.Sprintf("has no valid identity: %v", err))
	}
	var via *workloadv1.Service
	if h := g.GetHostname(); h != nil {
		via = l.ServiceByName(h.GetNamespace() + "/" + h.GetHostname())
	}
	return Decision{Kind: Tunnel, Dst: orig, Gateway: netip.AddrPortFrom(addr, port), Identity: id, Workload: wp, Service: svc, Waypoint: via}
}

// WaypointName names a waypoint for logs: its Service's "<namespace>/<hostname>", or its address.
func WaypointName(g *workloadv1.GatewayAddress) string {
	if h := g.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	if a, ok := netip.AddrFromSlice(g.GetAddress()); ok {
		return a.String()
	}
	return "(none)"
}

func dstName(svc *workloadv1.Service, orig netip.AddrPort) string {
	if svc != nil {
		return "service " + ServiceKey(svc)
	}
	return orig.String()
}

func (r *Router) viaService(l Lookup, src *workloadv1.Workload, svc *workloadv1.Service, orig netip.AddrPort) Decision {
	if svc.Waypoint != nil {
		return r.viaWaypoint(l, svc.Waypoint, orig, svc)
	}
	key := ServiceKey(svc)
	eps := l.Endpoints(key)
	var (
		best      = -1
		candidate []endpoint
	)
	for _, w := range eps {
		if w.Status != workloadv1.WorkloadStatus_HEALTHY {
			continue
		}
		port, ok := TargetPort(w, key, orig.Port())
		if !ok {
			continue
		}
		addr, ok := addrOfFamily(w, orig.Addr().Is4())
		if !ok {
			continue
		}
		score := localityScore(src, w)
		if score < best {
			continue
		}
		if score > best {
			best, candidate = score, candidate[:0]
		}
		candidate = append(candidate, endpoint{w, netip.AddrPortFrom(addr, port)})
	}
	if len(candidate) == 0 {
		return Decision{Kind: Refuse, Service: svc, Reason: fmt.Sprintf("service %s has no ready endpoint for port %d", key, orig.Port())}
	}
	ctr, _ := r.rr.LoadOrStore(key, new(atomic.Uint64))
	ep := candidate[(ctr.(*atomic.Uint64).Add(1)-1)%uint64(len(candidate))]
	return toWorkload(ep.w, ep.dst, svc)
}

type endpoint struct {
	w   *workloadv1.Workload
	dst netip.AddrPort
}

// toWorkload sends to a known workload: over HBONE when it is in the mesh, in plain TCP otherwise.
func toWorkload(w *workloadv1.Workload, dst netip.AddrPort, svc *workloadv1.Service) Decision {
	if w.TunnelProtocol != workloadv1.TunnelProtocol_HBONE {
		return Decision{Kind: Passthrough, Dst: dst, Workload: w, Service: svc}
	}
	id := identity.Identity{TrustDomain: w.TrustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
	if err := id.Validate(); err != nil {
		return Decision{Kind: Refuse, Workload: w, Service: svc, Reason: fmt.Sprintf("workload %s/%s has no valid identity: %v", w.Namespace, w.Name, err)}
	}
	return Decision{Kind: Tunnel, Dst: dst, Gateway: netip.AddrPortFrom(dst.Addr(), mesh.PortHBONE), Identity: id, Workload: w, Service: svc}
}

// TargetPort is the port workload w serves port servicePort of Service key on; false when it does
// not serve it.
func TargetPort(w *workloadv1.Workload, key string, servicePort uint16) (uint16, bool) {
	pl, ok := w.Services[key]
	if !ok {
		return 0, false
	}
	for _, p := range pl.GetPorts() {
		if p.ServicePort == uint32(servicePort) {
			if p.TargetPort == 0 || p.TargetPort > 65535 {
				return servicePort, true
			}
			return uint16(p.TargetPort), true
		}
	}
	return 0, false
}

func addrOfFamily(w *workloadv1.Workload, v4 bool) (netip.Addr, bool) {
	for _, b := range w.Addresses {
		if a, ok := netip.AddrFromSlice(b); ok && a.Unmap().Is4() == v4 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// localityScore counts how much of the locality src and w share, most significant first
// (region, then zone, then subzone); without a source locality every endpoint is equal.
func localityScore(src, w *workloadv1.Workload) int {
	s, d := src.GetLocality(), w.GetLocality()
	if s == nil || d == nil || s.Region == "" || s.Region != d.Region {
		return 0
	}
	if s.Zone == "" || s.Zone != d.Zone {
		return 1
	}
	if s.Subzone == "" || s.Subzone != d.Subzone {
		return 2
	}
	return 3
}

// InboundWaypoints returns the waypoints that traffic to workload w on port (a port the workload
// listens on) must come through, or none when it may come directly. Traffic must come through a
// waypoint when w is bound to one (all its traffic goes through it) or when a Service that w
// serves on that port has L7 policy at its waypoint (enforce_waypoint); anything else would skip
// that policy. It may then come through w's own waypoint or through the waypoint of any Service
// w serves on that port: a Service's waypoint sends its requests to the Service's pods directly.
func InboundWaypoints(l Lookup, w *workloadv1.Workload, port uint16) []*workloadv1.GatewayAddress {
	var out []*workloadv1.GatewayAddress
	enforce := w.Waypoint != nil
	if enforce {
		out = append(out, w.Waypoint)
	}
	for key, pl := range w.Services {
		svc := l.ServiceByName(key)
		if svc == nil || svc.Waypoint == nil {
			continue
		}
		for _, p := range pl.GetPorts() {
			if tp := p.TargetPort; tp == uint32(port) || (tp == 0 && p.ServicePort == uint32(port)) {
				out = append(out, svc.Waypoint)
				enforce = enforce || svc.EnforceWaypoint
				break
			}
		}
	}
	if !enforce {
		return nil
	}
	return out
}

// FromWaypoint reports whether principal ("<trust domain>/ns/<ns>/sa/<sa>") is the identity of
// a pod of one of the waypoints.
func FromWaypoint(l Lookup, wps []*workloadv1.GatewayAddress, principal string) bool {
	if principal == "" {
		return false
	}
	for _, g := range wps {
		var pods []*workloadv1.Workload
		if h := g.GetHostname(); h != nil {
			pods = l.Endpoints(h.GetNamespace() + "/" + h.GetHostname())
		} else if a, ok := netip.AddrFromSlice(g.GetAddress()); ok {
			if w := l.WorkloadByAddr(a.Unmap()); w != nil {
				pods = []*workloadv1.Workload{w}
			}
		}
		for _, p := range pods {
			if p.TrustDomain+"/ns/"+p.Namespace+"/sa/"+p.ServiceAccount == principal {
				return true
			}
		}
	}
	return false
}
