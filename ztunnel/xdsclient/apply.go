package xdsclient

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// rejection is a resource refused, which keeps its previous version (or stays absent).
type rejection struct {
	name string // "" for the whole response
	err  error
}

func (r rejection) String() string {
	if r.name == "" {
		return r.err.Error()
	}
	return r.name + ": " + r.err.Error()
}

// apply returns the State that results from applying resp to prev (prev itself when nothing
// changes) and the resources it refused.
//
// Refusal is per resource: a refused resource keeps its previous version and the rest of the
// response is applied. istiod-lite keeps no per-resource record of what a client holds and does
// not resend what was NACKed (istiod-lite/xds/README.md), so rejecting a whole response, as Envoy
// does, would leave every good resource of it stale until it next changes: one bad workload in a
// first push would leave the node with none. A refused resource is sent again when it changes,
// or on reconnect, since initial_resource_versions then lists the version kept.
//
// apply never modifies prev, nor anything prev shares with the returned State.
func apply(prev *State, resp *deltaResponse, v Validator) (*State, []rejection) {
	typ := resp.typeURL
	next := *prev
	var rej []rejection
	changed := false
	switch typ {
	case TypeWorkload:
		var olds, news []named[*workloadv1.Workload]
		next.workloads, olds, news, rej = applyTable(typ, prev.workloads, resp, func() *workloadv1.Workload { return new(workloadv1.Workload) }, checkWorkload, v)
		if changed = next.workloads != nil; changed {
			next.byAddr = prev.byAddr.update(olds, news)
		}
	case TypeService:
		var olds, news []named[*workloadv1.Service]
		next.services, olds, news, rej = applyTable(typ, prev.services, resp, func() *workloadv1.Service { return new(workloadv1.Service) }, checkService, v)
		if changed = next.services != nil; changed {
			next.byVIP = prev.byVIP.update(olds, news)
		}
	case TypeAuthorization:
		next.authz, _, _, rej = applyTable(typ, prev.authz, resp, func() *workloadv1.Authorization { return new(workloadv1.Authorization) }, checkAuthorization, v)
		changed = next.authz != nil
	case TypeServiceRoutes:
		next.routes, _, _, rej = applyTable(typ, prev.routes, resp, func() *routev1.ServiceRoutes { return new(routev1.ServiceRoutes) }, checkRoutes, v)
		changed = next.routes != nil
	case TypeTrustBundle:
		var b map[string]entry[*cav1.TrustBundle]
		held := map[string]entry[*cav1.TrustBundle]{}
		if prev.bundle != nil {
			held[TrustBundleName] = prev.bundle.entry
		}
		b, _, _, rej = applyTable(typ, held, resp, func() *cav1.TrustBundle { return new(cav1.TrustBundle) }, checkBundle, v)
		if changed = b != nil; changed {
			next.bundle = nil
			if e, ok := b[TrustBundleName]; ok {
				next.bundle = newBundle(e)
			}
		}
	default:
		return prev, []rejection{{err: fmt.Errorf("unknown type %q", typ)}}
	}
	if !changed {
		return prev, rej
	}
	return &next, rej
}

// applyTable applies resp to the table prev. It returns the new table (nil when nothing changes),
// the previous versions of what changed or was removed, the new versions, and what was refused.
func applyTable[T proto.Message](typ string, prev map[string]entry[T], resp *deltaResponse,
	newMsg func() T, check func(string, T) error, v Validator,
) (next map[string]entry[T], olds, news []named[T], rej []rejection) {
	res, removed := resp.resources, resp.removed
	// A name listed twice (two bodies, or a body and a removal) is ambiguous: both are refused.
	seen := make(map[string]bool, len(res)+len(removed))
	var dup map[string]bool
	mark := func(n string) {
		if seen[n] {
			if dup == nil {
				dup = map[string]bool{}
			}
			dup[n] = true
		}
		seen[n] = true
	}
	for _, r := range res {
		mark(r.name)
	}
	for _, n := range removed {
		mark(n)
	}
	for n := range dup {
		rej = append(rej, rejection{n, errors.New("listed more than once in the response")})
	}

	news = make([]named[T], 0, len(res))
	versions := make([]string, 0, len(res)) // of news
	for i, r := range res {
		name := r.name
		if dup[name] {
			continue
		}
		m := newMsg()
		if err := decode(typ, &res[i], m); err != nil {
			rej = append(rej, rejection{name, err})
			continue
		}
		if err := check(name, m); err != nil {
			rej = append(rej, rejection{name, err})
			continue
		}
		if v != nil {
			if err := v(typ, name, m); err != nil {
				rej = append(rej, rejection{name, err})
				continue
			}
		}
		news = append(news, named[T]{name, m})
		versions = append(versions, r.version)
	}
	var gone []string
	for _, n := range removed {
		if _, ok := prev[n]; ok && !dup[n] {
			gone = append(gone, n)
		}
	}
	if len(news) == 0 && len(gone) == 0 {
		return nil, nil, nil, rej
	}

	if len(prev) == 0 {
		next = make(map[string]entry[T], len(news)) // a first push: sized once
	} else {
		next = maps.Clone(prev)
	}
	for _, n := range gone {
		olds = append(olds, named[T]{n, prev[n].msg})
		delete(next, n)
	}
	for i, n := range news {
		if e, ok := prev[n.name]; ok {
			olds = append(olds, named[T]{n.name, e.msg})
		}
		next[n.name] = entry[T]{msg: n.v, version: versions[i]}
	}
	return next, olds, news, rej
}

func decode(typ string, r *resource, m proto.Message) error {
	if r.name == "" {
		return errors.New("no name")
	}
	if !r.hasBody {
		return errors.New("no body")
	}
	if r.bodyType != typ {
		return fmt.Errorf("body of type %q", r.bodyType)
	}
	if err := proto.Unmarshal(r.body, m); err != nil {
		return fmt.Errorf("unmarshal: %w", err)
	}
	return nil
}

func checkAddr(what string, b []byte) error {
	if len(b) != 4 && len(b) != 16 {
		return fmt.Errorf("%s: %d bytes, want 4 or 16", what, len(b))
	}
	return nil
}

func checkWaypoint(g *workloadv1.GatewayAddress) error {
	if a, ok := g.GetDestination().(*workloadv1.GatewayAddress_Address); ok {
		return checkAddr("waypoint address", a.Address)
	}
	return nil
}

func checkWorkload(name string, w *workloadv1.Workload) error {
	if w.GetUid() != name {
		return fmt.Errorf("uid %q differs from the resource name", w.GetUid())
	}
	var errs []error
	for i, a := range w.GetAddresses() {
		errs = append(errs, checkAddr(fmt.Sprintf("address %d", i), a))
	}
	errs = append(errs, checkWaypoint(w.GetWaypoint()))
	return errors.Join(errs...)
}

func checkService(name string, s *workloadv1.Service) error {
	if s.GetHostname() == "" || s.GetNamespace()+"/"+s.GetHostname() != name {
		return fmt.Errorf("namespace %q and hostname %q do not make the resource name", s.GetNamespace(), s.GetHostname())
	}
	var errs []error
	for i, a := range s.GetAddresses() {
		errs = append(errs, checkAddr(fmt.Sprintf("address %d", i), a))
	}
	for _, p := range s.GetPorts() {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
			errs = append(errs, fmt.Errorf("port %d -> %d: out of range", p.GetServicePort(), p.GetTargetPort()))
		}
	}
	errs = append(errs, checkWaypoint(s.GetWaypoint()))
	return errors.Join(errs...)
}

func checkAuthorization(name string, a *workloadv1.Authorization) error {
	if a.GetName() == "" || a.GetNamespace()+"/"+a.GetName() != name {
		return fmt.Errorf("namespace %q and name %q do not make the resource name", a.GetNamespace(), a.GetName())
	}
	return nil
}

func checkRoutes(name string, r *routev1.ServiceRoutes) error {
	if r.GetHostname() == "" || r.GetNamespace()+"/"+r.GetHostname() != name {
		return fmt.Errorf("namespace %q and hostname %q do not make the resource name", r.GetNamespace(), r.GetHostname())
	}
	return nil
}

func checkBundle(name string, b *cav1.TrustBundle) error {
	if name != TrustBundleName {
		return fmt.Errorf("want the single resource %q", TrustBundleName)
	}
	_, _, err := parseRoots(b.GetRoots())
	return err
}

// parseRoots parses PEM roots. A bundle without a certificate is refused: applying it would make
// every peer untrusted, and the previous roots are the better guess.
func parseRoots(roots []string) (*x509.CertPool, []byte, error) {
	pool := x509.NewCertPool()
	var all []byte
	n := 0
	for i, r := range roots {
		rest := []byte(r)
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("root %d: %w", i, err)
			}
			pool.AddCert(c)
			all = append(all, pem.EncodeToMemory(blk)...)
			n++
		}
	}
	if n == 0 {
		return nil, nil, errors.New("no root certificate")
	}
	return pool, all, nil
}

func newBundle(e entry[*cav1.TrustBundle]) *bundle {
	pool, pemBytes, _ := parseRoots(e.msg.GetRoots()) // checked by checkBundle
	return &bundle{entry: e, pool: pool, pem: pemBytes}
}

func workloadName(w *workloadv1.Workload) string { return w.GetUid() }

func serviceName(s *workloadv1.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

// workloadKeys appends w's addresses; IPv4-mapped ones as IPv4, so both forms find it.
func workloadKeys(w *workloadv1.Workload, buf []netip.Addr) []netip.Addr {
	for _, b := range w.GetAddresses() {
		if a, ok := netip.AddrFromSlice(b); ok && !slices.Contains(buf, a.Unmap()) {
			buf = append(buf, a.Unmap())
		}
	}
	return buf
}

// serviceKeys appends s's (cluster IP, service port) pairs.
func serviceKeys(s *workloadv1.Service, buf []netip.AddrPort) []netip.AddrPort {
	for _, b := range s.GetAddresses() {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			continue
		}
		for _, p := range s.GetPorts() {
			if p.GetServicePort() == 0 || p.GetServicePort() > 65535 {
				continue
			}
			k := netip.AddrPortFrom(a.Unmap(), uint16(p.GetServicePort()))
			if !slices.Contains(buf, k) {
				buf = append(buf, k)
			}
		}
	}
	return buf
}
