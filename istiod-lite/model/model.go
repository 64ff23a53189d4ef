// Package model translates what users write in Kubernetes (Pods, Services, Namespaces, waypoint
// Gateways, AuthorizationPolicy, PeerAuthentication) into the resources proxies consume
// (api/workload/v1). It is pure: it reads the objects it is given and never talks to the API
// server, so translation is deterministic and testable without a cluster.
package model

import (
	"errors"
	"hash/fnv"
	"slices"
	"sort"

	netv1 "istio.io/client-go/pkg/apis/networking/v1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Config holds the mesh-wide settings translation depends on.
type Config struct {
	// ClusterDomain is the DNS suffix of Services: <name>.<ns>.svc.<ClusterDomain>.
	ClusterDomain string
	// TrustDomain is the SPIFFE trust domain of workload identities.
	TrustDomain string
	// RootNamespace holds mesh-wide policies (Istio's istio-system).
	RootNamespace string
}

// DefaultConfig returns the settings of a default cluster.
func DefaultConfig() Config {
	return Config{ClusterDomain: "cluster.local", TrustDomain: "cluster.local", RootNamespace: "istio-system"}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.ClusterDomain == "" {
		errs = append(errs, errors.New("cluster domain is empty"))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("trust domain is empty"))
	}
	if c.RootNamespace == "" {
		errs = append(errs, errors.New("root namespace is empty"))
	}
	return errors.Join(errs...)
}

// Input is the Kubernetes state translation reads. Slices may be in any order.
type Input struct {
	Namespaces            []*corev1.Namespace
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	Gateways              []*gwv1.Gateway
	AuthorizationPolicies []*secv1.AuthorizationPolicy
	PeerAuthentications   []*secv1.PeerAuthentication
	// RequestAuthentications with targetRefs are the waypoints' (requestauthn.go).
	RequestAuthentications []*secv1.RequestAuthentication
	// DestinationRules give Services their traffic policy, for waypoints (trafficpolicy.go).
	DestinationRules []*netv1.DestinationRule
	// Nodes give workloads their locality; only their names and labels are read.
	Nodes []*corev1.Node
	// Routes are checked (routeProblems) and translated for waypoints (serviceRoutes).
	HTTPRoutes      []*gwv1.HTTPRoute
	GRPCRoutes      []*gwv1.GRPCRoute
	ReferenceGrants []*gwv1.ReferenceGrant
}

// Snapshot is the complete translated state, keyed by xDS resource name. A Snapshot is immutable
// once returned: the xDS server shares it between connections.
type Snapshot struct {
	Workloads      map[string]*workloadv1.Workload
	Services       map[string]*workloadv1.Service
	Authorizations map[string]*workloadv1.Authorization
	// Routes are the HTTP routing of each Service, for waypoints, by the Service's name.
	Routes map[string]*routev1.ServiceRoutes
	// Problems are what could not be translated as written, sorted, for logs, Events and status.
	Problems []Problem
}

// GetWorkload returns the workload named name, or nil; s may be nil.
func (s *Snapshot) GetWorkload(name string) *workloadv1.Workload {
	if s == nil {
		return nil
	}
	return s.Workloads[name]
}

// GetService returns the service named name, or nil; s may be nil.
func (s *Snapshot) GetService(name string) *workloadv1.Service {
	if s == nil {
		return nil
	}
	return s.Services[name]
}

// GetRoutes returns the routes of the service named name, or nil; s may be nil.
func (s *Snapshot) GetRoutes(name string) *routev1.ServiceRoutes {
	if s == nil {
		return nil
	}
	return s.Routes[name]
}

// GetAuthorization returns the authorization named name, or nil; s may be nil.
func (s *Snapshot) GetAuthorization(name string) *workloadv1.Authorization {
	if s == nil {
		return nil
	}
	return s.Authorizations[name]
}

// WorkloadName is the xDS resource name of a workload.
func WorkloadName(w *workloadv1.Workload) string { return w.GetUid() }

// ServiceName is the xDS resource name of a service: "<namespace>/<hostname>".
func ServiceName(s *workloadv1.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

// AuthorizationName is the xDS resource name of an authorization: "<namespace>/<name>".
func AuthorizationName(a *workloadv1.Authorization) string {
	return a.GetNamespace() + "/" + a.GetName()
}

// Translate builds the snapshot for in. It never fails as a whole: an object that cannot be
// translated is left out (or narrowed, see authorization.go) and reported in Snapshot.Problems.
func Translate(cfg Config, in Input) *Snapshot { return NewTranslator(cfg).Translate(in) }

// Translator translates repeatedly, reusing what did not change. Pods are by far the most
// numerous and most often changed objects, and a workload depends only on its pod and on the other
// (non-pod) objects, while services and authorizations do not depend on pods. So as long as no
// non-pod object changed, a translation re-translates only the pods whose resourceVersion changed
// and reuses every other resource of the previous snapshot, pointer for pointer (which lets
// xds.Snapshot.Next reuse their serialised form too). Any change of a non-pod object, or an
// object without a resourceVersion (whose changes cannot be told), means a full translation.
//
// A Translator is not safe for concurrent use.
type Translator struct {
	cfg Config
	// Of the last translation:
	last       *Snapshot
	lastSum    uint64      // fingerprint of the non-pod objects, 0 when not usable
	t          *translator // built from those objects
	ctxProblem []Problem   // problems of the non-pod objects
	pods       map[types.UID]podResult
	stats      Stats
}

// Stats describes a translation, for metrics and logs.
type Stats struct {
	Full       bool // everything was translated
	Translated int  // pods translated (the others were reused)
}

// Stats describes the last translation.
func (tr *Translator) Stats() Stats { return tr.stats }

type podResult struct {
	resourceVersion string
	workload        *workloadv1.Workload // nil: the pod is not a workload
	problems        []Problem
}

// NewTranslator returns a Translator with nothing to reuse yet.
func NewTranslator(cfg Config) *Translator { return &Translator{cfg: cfg} }

// Translate builds the snapshot for in; see the package function Translate.
func (tr *Translator) Translate(in Input) *Snapshot {
	sum := contextSum(in)
	snap := &Snapshot{Workloads: make(map[string]*workloadv1.Workload, len(in.Pods))}
	reuse := tr.last != nil && sum != 0 && sum == tr.lastSum
	if reuse {
		snap.Services, snap.Authorizations, snap.Routes = tr.last.Services, tr.last.Authorizations, tr.last.Routes
	} else {
		tr.t = newTranslator(tr.cfg, in)
		snap.Services = map[string]*workloadv1.Service{}
		snap.Authorizations = map[string]*workloadv1.Authorization{}
		for _, s := range in.Services {
			if svc := tr.t.service(s); svc != nil {
				snap.Services[ServiceName(svc)] = svc
			}
		}
		for _, ap := range in.AuthorizationPolicies {
			if a := tr.t.authorizationPolicy(ap); a != nil {
				snap.Authorizations[AuthorizationName(a)] = a
			}
		}
		for _, pa := range in.PeerAuthentications {
			if a := tr.t.peerAuthentication(pa); a != nil {
				snap.Authorizations[AuthorizationName(a)] = a
			}
		}
		snap.Routes = tr.t.serviceRoutes(in)
		tr.t.waypointPolicies(in, snap.Services, snap.Routes)
		tr.t.requestAuthentications(in, snap.Services, snap.Routes)
		tr.t.destinationRules(in, snap.Services, snap.Routes)
		enforceWaypoints(snap.Services, snap.Routes)
		tr.ctxProblem = append(tr.t.problems, routeProblems(in)...)
	}
	t := tr.t
	tr.stats = Stats{Full: !reuse}
	pods := make(map[types.UID]podResult, len(in.Pods))
	problems := slices.Clone(tr.ctxProblem)
	for _, p := range in.Pods {
		r, ok := tr.pods[p.UID]
		if !reuse || !ok || p.ResourceVersion == "" || r.resourceVersion != p.ResourceVersion {
			t.problems = nil
			tr.stats.Translated++
			r = podResult{resourceVersion: p.ResourceVersion, workload: t.workload(p, snap.Authorizations), problems: t.problems}
		}
		pods[p.UID] = r
		if r.workload != nil {
			snap.Workloads[WorkloadName(r.workload)] = r.workload
		}
		problems = append(problems, r.problems...)
	}
	snap.Problems = sortProblems(problems)
	tr.last, tr.lastSum, tr.pods = snap, sum, pods
	return snap
}

// sumObjects adds to sum a hash of each object's kind, identity and resourceVersion; it returns
// false when an object has no resourceVersion.
func sumObjects[T metav1.Object](sum *uint64, kind string, objs []T) bool {
	for _, o := range objs {
		if o.GetResourceVersion() == "" {
			return false
		}
		*sum += hashFields(kind, o.GetNamespace(), o.GetName(), string(o.GetUID()), o.GetResourceVersion())
	}
	return true
}

// hashFields hashes strings, each terminated by a zero byte (FNV-1a, 64 bits).
func hashFields(fields ...string) uint64 {
	h := fnv.New64a()
	for _, f := range fields {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// contextSum fingerprints every object but the pods: the sum of a hash of each one's identity and
// resourceVersion, so that the order of the input does not matter. It returns 0 when an object has
// no resourceVersion.
func contextSum(in Input) uint64 {
	var sum uint64
	ok := sumObjects(&sum, "Namespace", in.Namespaces) && sumObjects(&sum, "Service", in.Services) &&
		sumObjects(&sum, "Gateway", in.Gateways) && sumObjects(&sum, "AuthorizationPolicy", in.AuthorizationPolicies) &&
		sumObjects(&sum, "PeerAuthentication", in.PeerAuthentications) && sumObjects(&sum, "HTTPRoute", in.HTTPRoutes) &&
		sumObjects(&sum, "GRPCRoute", in.GRPCRoutes) && sumObjects(&sum, "ReferenceGrant", in.ReferenceGrants) &&
		sumObjects(&sum, "RequestAuthentication", in.RequestAuthentications) && sumObjects(&sum, "DestinationRule", in.DestinationRules)
	if !ok {
		return 0
	}
	// A node's status changes often (heartbeats) and does not matter: only what translation
	// reads of it is fingerprinted, so that a node heartbeat does not cost a full translation.
	for _, n := range in.Nodes {
		t := Topology(n)
		sum += hashFields("Node", n.Name, t[0], t[1], t[2])
	}
	if sum == 0 {
		sum = 1 // an empty context is usable too
	}
	return sum
}

type translator struct {
	cfg        Config
	namespaces map[string]*corev1.Namespace
	// services by namespace, for selector matching, with their selectors built once.
	services  map[string][]*corev1.Service
	selectors map[*corev1.Service]labels.Selector
	// gateways by "<namespace>/<name>", waypoints only.
	waypoints map[string]*gwv1.Gateway
	// policies by namespace.
	authzPolicies map[string][]*secv1.AuthorizationPolicy
	peerAuthns    map[string][]*secv1.PeerAuthentication
	// localities by node name, for nodes with topology labels.
	localities map[string]*workloadv1.Locality
	problems   []Problem
}

func newTranslator(cfg Config, in Input) *translator {
	t := &translator{
		cfg:           cfg,
		namespaces:    map[string]*corev1.Namespace{},
		services:      map[string][]*corev1.Service{},
		selectors:     map[*corev1.Service]labels.Selector{},
		waypoints:     map[string]*gwv1.Gateway{},
		authzPolicies: map[string][]*secv1.AuthorizationPolicy{},
		peerAuthns:    map[string][]*secv1.PeerAuthentication{},
		localities:    map[string]*workloadv1.Locality{},
	}
	for _, n := range in.Nodes {
		if l := localityOf(n); l != nil {
			t.localities[n.Name] = l
		}
	}
	for _, ns := range in.Namespaces {
		t.namespaces[ns.Name] = ns
	}
	for _, s := range in.Services {
		t.services[s.Namespace] = append(t.services[s.Namespace], s)
		if len(s.Spec.Selector) > 0 {
			t.selectors[s] = labels.SelectorFromValidatedSet(s.Spec.Selector)
		}
	}
	for _, g := range in.Gateways {
		if string(g.Spec.GatewayClassName) == meshWaypointClass {
			t.waypoints[g.Namespace+"/"+g.Name] = g
		}
	}
	for _, ap := range in.AuthorizationPolicies {
		t.authzPolicies[ap.Namespace] = append(t.authzPolicies[ap.Namespace], ap)
	}
	for _, pa := range in.PeerAuthentications {
		t.peerAuthns[pa.Namespace] = append(t.peerAuthns[pa.Namespace], pa)
	}
	// Deterministic iteration for the rest of translation.
	for _, l := range t.authzPolicies {
		sort.Slice(l, func(i, j int) bool { return l[i].Name < l[j].Name })
	}
	for _, l := range t.peerAuthns {
		slices.SortFunc(l, olderFirst) // Istio's choice among policies of one level
	}
	return t
}

func (t *translator) report(p Problem) { t.problems = append(t.problems, p) }

func (t *translator) hostname(name, ns string) string {
	return name + "." + ns + ".svc." + t.cfg.ClusterDomain
}
