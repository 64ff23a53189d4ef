package proxy

// The configuration as the waypoint reads it: one xDS State with what requests need indexed
// once per State (the workloads behind each Service, and each Service's compiled routes). A State
// is immutable, so a view is too, and requests read it without locks.

import (
	"net/netip"
	"sync"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/waypoint/jwt"
	"github.com/ambient-mesh/ambient/waypoint/route"
	ztroute "github.com/ambient-mesh/ambient/ztunnel/route"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// view is one State with its indexes.
type view struct {
	st        *xdsclient.State
	endpoints map[string][]*workloadv1.Workload // service -> workloads serving it
	tables    map[string]*route.Table           // service -> compiled routes (valid ones only)
	authn     map[string]*jwt.Authenticator     // service -> its RequestAuthentication, if any
}

func newView(st *xdsclient.State, keys *jwt.KeySource) *view {
	v := &view{st: st, endpoints: map[string][]*workloadv1.Workload{}, tables: map[string]*route.Table{},
		authn: map[string]*jwt.Authenticator{}}
	for _, w := range st.Workloads() {
		for key := range w.Services {
			v.endpoints[key] = append(v.endpoints[key], w)
		}
	}
	for name, sr := range st.AllRoutes() {
		// The validator NACKed what does not compile, so this holds the last good version.
		if t, err := route.Compile(sr); err == nil {
			v.tables[name] = t
		}
		if len(sr.JwtRules) > 0 {
			v.authn[name] = jwt.New(providers(sr.JwtRules), keys)
		}
	}
	return v
}

// providers turns pushed JWT rules into the authenticator's providers.
func providers(rules []*routev1.JWTRule) []jwt.Provider {
	out := make([]jwt.Provider, 0, len(rules))
	for _, r := range rules {
		p := jwt.Provider{Issuer: r.Issuer, Audiences: r.Audiences, JWKSURI: r.JwksUri, JWKS: r.Jwks,
			FromParams: r.FromParams, ForwardOriginalToken: r.ForwardOriginalToken}
		for _, h := range r.FromHeaders {
			p.FromHeaders = append(p.FromHeaders, jwt.HeaderLocation{Name: h.Name, Prefix: h.Prefix})
		}
		for _, c := range r.OutputClaimToHeaders {
			p.OutputClaimToHeaders = append(p.OutputClaimToHeaders, jwt.ClaimHeader{Header: c.Header, Claim: c.Claim})
		}
		out = append(out, p)
	}
	return out
}

// endpoint is one ready workload serving a Service port, with the address to reach it.
type endpoint struct {
	w    *workloadv1.Workload
	addr netip.AddrPort
}

// ready returns the ready endpoints of service key's port, in the address family of v4.
func (v *view) ready(key string, port uint16, v4 bool) []endpoint {
	var out []endpoint
	for _, w := range v.endpoints[key] {
		if w.Status != workloadv1.WorkloadStatus_HEALTHY {
			continue
		}
		tp, ok := ztroute.TargetPort(w, key, port)
		if !ok {
			continue
		}
		for _, b := range w.Addresses {
			if a, ok := netip.AddrFromSlice(b); ok && a.Unmap().Is4() == v4 {
				out = append(out, endpoint{w, netip.AddrPortFrom(a.Unmap(), tp)})
				break
			}
		}
	}
	return out
}

// readyAt returns the ready endpoint of service key's port at addr, if there is one.
func (v *view) readyAt(key string, port uint16, addr netip.AddrPort) (endpoint, bool) {
	for _, e := range v.ready(key, port, addr.Addr().Is4()) {
		if e.addr == addr {
			return e, true
		}
	}
	return endpoint{}, false
}

// current gives the view of the store's latest State, built once per State.
type current struct {
	store *xdsclient.Store
	keys  *jwt.KeySource
	mu    sync.Mutex
	last  *view
}

func (c *current) get() *view {
	st := c.store.Load()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil || c.last.st != st {
		c.last = newView(st, c.keys)
	}
	return c.last
}

// ValidateRoutes is the xDS client's validator: routes that do not compile are NACKed and the
// last good version keeps serving.
func ValidateRoutes(typeURL, _ string, m any) error {
	if sr, ok := m.(*routev1.ServiceRoutes); ok && typeURL == xdsclient.TypeServiceRoutes {
		_, err := route.Compile(sr)
		return err
	}
	return nil
}

// protocol returns a tunnel's configured protocol ("" to sniff): its Service port's, or for a
// workload the protocol of a Service port that targets the port asked for.
func (v *view) protocol(t *tunnel) string {
	if t.svc != nil {
		return v.tables[t.key].Protocol(t.port)
	}
	for svc, pl := range t.dst.GetServices() {
		for _, p := range pl.GetPorts() {
			if target := p.GetTargetPort(); target == uint32(t.port) || target == 0 && p.GetServicePort() == uint32(t.port) {
				if proto := v.tables[svc].Protocol(uint16(p.GetServicePort())); proto != "" {
					return proto
				}
			}
		}
	}
	return ""
}
