package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// Type URLs of the resources served.
var (
	TypeWorkload      = typeURL(&workloadv1.Workload{})
	TypeService       = typeURL(&workloadv1.Service{})
	TypeAuthorization = typeURL(&workloadv1.Authorization{})
	TypeTrustBundle   = typeURL(&cav1.TrustBundle{})
	TypeServiceRoutes = typeURL(&routev1.ServiceRoutes{})
)

// TrustBundleName is the name of the single TrustBundle resource.
const TrustBundleName = "trust-bundle"

func typeURL(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

// resource is one serialised resource. Its version is a hash of its content, so versions agree
// across istiod-lite replicas and restarts, and a reconnecting client's initial_resource_versions
// can be compared with what would be sent.
//
// wire is the resource as sent, encoded once and shared by every stream (see codec.go); kept
// as a mem.Buffer so that a response lists it without allocating.
type resource struct {
	name    string
	version string
	wire    mem.Buffer
}

// Snapshot is an immutable, serialised model snapshot plus the index used to scope it per proxy.
type Snapshot struct {
	created time.Time
	// version names the snapshot in responses (system_version_info); set by Server.Update.
	version   string
	resources map[string]map[string]*resource // type URL -> name -> resource

	// Authorization scoping for ztunnels (see visible).
	authzScope     map[string]workloadv1.Scope
	authzNamespace map[string]string
	nodeNamespaces map[string]map[string]bool // node -> namespaces with a workload there
	nodeBoundAuthz map[string]map[string]bool // node -> selector-bound authorizations of its workloads
	// Waypoint scoping (see visible), by waypoint ("<namespace>/<hostname>" of its Service):
	// the services bound to it, and the workloads it forwards to (those backing a bound
	// service, and those bound to it themselves).
	waypointServices  map[string]map[string]bool
	waypointWorkloads map[string]map[string]bool
	// waypointBackends are the services a waypoint's routes send to that are not bound to it.
	waypointBackends map[string]map[string]bool
	model            *model.Snapshot
	bundle           *cav1.TrustBundle

	sortedMu sync.Mutex
	sorted   map[string][]string // type URL -> names, sorted (see sortedNames)
}

// NewSnapshot serialises m and the trust bundle (nil for none).
func NewSnapshot(m *model.Snapshot, bundle *cav1.TrustBundle) (*Snapshot, error) {
	return (*Snapshot)(nil).Next(m, bundle)
}

// Next is NewSnapshot reusing the serialised form of every resource that is the same message (the
// same pointer) in prev's model: a model.Translator hands unchanged resources over as they were,
// so a single pod change costs one serialisation, not one per workload in the cluster. prev may
// be nil.
func (prev *Snapshot) Next(m *model.Snapshot, bundle *cav1.TrustBundle) (*Snapshot, error) {
	var old *model.Snapshot
	if prev != nil {
		old = prev.model
	}
	s := &Snapshot{
		created: time.Now(),
		resources: map[string]map[string]*resource{
			TypeWorkload: {}, TypeService: {}, TypeAuthorization: {}, TypeTrustBundle: {}, TypeServiceRoutes: {},
		},
		authzScope:     map[string]workloadv1.Scope{},
		authzNamespace: map[string]string{},
		nodeNamespaces: map[string]map[string]bool{},
		nodeBoundAuthz: map[string]map[string]bool{},
		model:          m,

		waypointServices:  map[string]map[string]bool{},
		waypointWorkloads: map[string]map[string]bool{},
		waypointBackends:  map[string]map[string]bool{},
	}
	add := func(typ, name string, msg, was proto.Message) error {
		if was == msg && prev != nil {
			if r, ok := prev.resources[typ][name]; ok {
				s.resources[typ][name] = r
				return nil
			}
		}
		r, err := newResource(name, msg)
		if err != nil {
			return fmt.Errorf("%s %s: %w", typ, name, err)
		}
		s.resources[typ][name] = r
		return nil
	}
	svcWaypoint := map[string]string{} // service -> its waypoint
	for name, svc := range m.Services {
		if err := add(TypeService, name, svc, old.GetService(name)); err != nil {
			return nil, err
		}
		if wp := waypointKey(svc.GetWaypoint()); wp != "" {
			svcWaypoint[name] = wp
			addTo(s.waypointServices, wp, name)
		}
	}
	for name, w := range m.Workloads {
		if err := add(TypeWorkload, name, w, old.GetWorkload(name)); err != nil {
			return nil, err
		}
		if wp := waypointKey(w.GetWaypoint()); wp != "" {
			addTo(s.waypointWorkloads, wp, name)
		}
		if len(svcWaypoint) > 0 {
			for svc := range w.GetServices() {
				if wp := svcWaypoint[svc]; wp != "" {
					addTo(s.waypointWorkloads, wp, name)
				}
			}
		}
		node := w.GetNode()
		if s.nodeNamespaces[node] == nil {
			s.nodeNamespaces[node] = map[string]bool{}
			s.nodeBoundAuthz[node] = map[string]bool{}
		}
		s.nodeNamespaces[node][w.GetNamespace()] = true
		for _, a := range w.GetAuthorizationPolicies() {
			s.nodeBoundAuthz[node][a] = true
		}
	}
	// A waypoint routes to the backends of its services' routes too, which need not be bound to
	// it (a canary's Service, say): it sees those services and their workloads.
	for name, sr := range m.Routes {
		if err := add(TypeServiceRoutes, name, sr, old.GetRoutes(name)); err != nil {
			return nil, err
		}
		wp := svcWaypoint[name]
		if wp == "" {
			continue
		}
		for _, b := range routeBackends(sr) {
			if _, ok := m.Services[b]; ok && !s.waypointServices[wp][b] {
				addTo(s.waypointBackends, wp, b)
			}
		}
	}
	if len(s.waypointBackends) > 0 {
		backed := map[string][]string{} // backend service -> waypoints routing to it
		for wp, set := range s.waypointBackends {
			for b := range set {
				backed[b] = append(backed[b], wp)
			}
		}
		for name, w := range m.Workloads {
			for svc := range w.GetServices() {
				for _, wp := range backed[svc] {
					addTo(s.waypointWorkloads, wp, name)
				}
			}
		}
	}
	for name, a := range m.Authorizations {
		if err := add(TypeAuthorization, name, a, old.GetAuthorization(name)); err != nil {
			return nil, err
		}
		s.authzScope[name] = a.GetScope()
		s.authzNamespace[name] = a.GetNamespace()
	}
	if bundle != nil {
		var was proto.Message
		if prev != nil {
			was = prev.bundle
		}
		s.bundle = bundle
		if err := add(TypeTrustBundle, TrustBundleName, bundle, was); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// waypointKey names a waypoint by its Service, "<namespace>/<hostname>" (the Service's resource
// name); "" for none or a waypoint given by address only.
func waypointKey(g *workloadv1.GatewayAddress) string {
	if h := g.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	return ""
}

func addTo(m map[string]map[string]bool, k, v string) {
	if m[k] == nil {
		m[k] = map[string]bool{}
	}
	m[k][v] = true
}

func newResource(name string, m proto.Message) (*resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	r := &resource{name: name, version: hex.EncodeToString(sum[:8])}
	wire, err := encodeResource(&discoveryv3.Resource{Name: name, Version: r.version,
		Resource: &anypb.Any{TypeUrl: typeURL(m), Value: b}})
	if err != nil {
		return nil, err
	}
	r.wire = mem.SliceBuffer(wire)
	return r, nil
}

// sortedNames returns the names of the resources of typ, sorted; computed once per snapshot and
// type, on first use (a first push), and shared.
func (s *Snapshot) sortedNames(typ string) []string {
	s.sortedMu.Lock()
	defer s.sortedMu.Unlock()
	if names, ok := s.sorted[typ]; ok {
		return names
	}
	if s.sorted == nil {
		s.sorted = map[string][]string{}
	}
	names := slices.Sorted(maps.Keys(s.resources[typ]))
	s.sorted[typ] = names
	return names
}

// Model returns the snapshot's model, for the config dump.
func (s *Snapshot) Model() *model.Snapshot { return s.model }

// visible reports whether p may receive resource name of type typ.
//
// Scoping choices: a ztunnel receives all workloads and services, because it routes any pod on
// its node to any destination in the cluster; what is node-specific is policy. It receives the
// authorizations that can apply to a workload on its node: mesh-wide ones, namespace-wide ones of
// namespaces with a workload on the node, and selector-bound ones that a workload on the node
// lists. A waypoint receives what its bound services need: those services and their routes, the
// services their routes send to, the workloads behind all of them and the workloads bound to it,
// its own Service's routes (the policies for its bound workloads), and no authorizations (its L7
// policies travel in the routes). Every proxy receives the trust bundle. Any other role sees nothing.
func (s *Snapshot) visible(p *Proxy, typ, name string) bool {
	switch p.Role {
	case RoleZtunnel:
		if typ != TypeAuthorization {
			return true
		}
	case RoleWaypoint:
		switch typ {
		case TypeTrustBundle:
			return true
		case TypeService:
			return s.waypointServices[p.Waypoint][name] || s.waypointBackends[p.Waypoint][name]
		case TypeServiceRoutes:
			// Its own services' routes, the backends' (their traffic policy), and its own
			// Service's (the policies for the workloads bound to it).
			return name == p.Waypoint || s.waypointServices[p.Waypoint][name] || s.waypointBackends[p.Waypoint][name]
		case TypeWorkload:
			return s.waypointWorkloads[p.Waypoint][name]
		}
		return false
	default:
		return false
	}
	switch s.authzScope[name] {
	case workloadv1.Scope_GLOBAL:
		return true
	case workloadv1.Scope_NAMESPACE:
		return s.nodeNamespaces[p.Node][s.authzNamespace[name]]
	default:
		return s.nodeBoundAuthz[p.Node][name]
	}
}

// scoped returns the names of typ that p may see when that set is narrower than the snapshot
// and depends on other resources than the named one (a waypoint's workloads depend on its
// services), so that a push re-checks them even when they did not change themselves; nil
// otherwise.
func (s *Snapshot) scoped(p *Proxy, typ string) map[string]bool {
	if s == nil || p.Role != RoleWaypoint {
		return nil
	}
	switch typ {
	case TypeService:
		if len(s.waypointBackends[p.Waypoint]) == 0 {
			return s.waypointServices[p.Waypoint]
		}
		all := maps.Clone(s.waypointServices[p.Waypoint])
		if all == nil {
			all = map[string]bool{}
		}
		maps.Copy(all, s.waypointBackends[p.Waypoint])
		return all
	case TypeServiceRoutes:
		all := maps.Clone(s.scoped(p, TypeService))
		if all == nil {
			all = map[string]bool{}
		}
		all[p.Waypoint] = true
		return all
	case TypeWorkload:
		return s.waypointWorkloads[p.Waypoint]
	}
	return nil
}

// routeBackends lists the services a ServiceRoutes sends to (rules' backends and mirrors).
func routeBackends(sr *routev1.ServiceRoutes) []string {
	var out []string
	addFilters := func(fs []*routev1.Filter) {
		for _, f := range fs {
			if m := f.GetMirror(); m != nil && m.GetBackend().GetService() != "" {
				out = append(out, m.GetBackend().GetService())
			}
		}
	}
	for _, r := range sr.GetRules() {
		addFilters(r.GetFilters())
		for _, b := range r.GetBackends() {
			if b.GetService() != "" {
				out = append(out, b.GetService())
			}
			addFilters(b.GetFilters())
		}
	}
	return out
}

// changed returns, per type, the names whose resource differs between old and new (added, changed
// or removed). Authorizations are not diffed: whether one is visible to a node also depends on the
// node's workloads, so every push re-evaluates them all (there are few).
func changed(old, new *Snapshot) map[string]map[string]struct{} {
	out := map[string]map[string]struct{}{}
	for typ, nr := range new.resources {
		if typ == TypeAuthorization {
			continue
		}
		d := map[string]struct{}{}
		or := old.resources[typ]
		for name, r := range nr {
			if o, ok := or[name]; !ok || (o != r && o.version != r.version) {
				d[name] = struct{}{}
			}
		}
		for name := range or {
			if _, ok := nr[name]; !ok {
				d[name] = struct{}{}
			}
		}
		out[typ] = d
	}
	return out
}
