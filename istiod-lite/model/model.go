// Package model translates what users write in Kubernetes (Pods, Services, Namespaces, waypoint
// Gateways, AuthorizationPolicy, PeerAuthentication) into the resources proxies consume
// (api/workload/v1). It is pure: it reads the objects it is given and never talks to the API
// server, so translation is deterministic and testable without a cluster.
package model

import (
	"errors"
	"fmt"
	"sort"

	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

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
}

// Snapshot is the complete translated state, keyed by xDS resource name. A Snapshot is immutable
// once returned: the xDS server shares it between connections.
type Snapshot struct {
	Workloads      map[string]*workloadv1.Workload
	Services       map[string]*workloadv1.Service
	Authorizations map[string]*workloadv1.Authorization
	// Problems are objects that could not be translated in full, for logs and status.
	Problems []string
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
func Translate(cfg Config, in Input) *Snapshot {
	t := newTranslator(cfg, in)
	snap := &Snapshot{
		Workloads:      map[string]*workloadv1.Workload{},
		Services:       map[string]*workloadv1.Service{},
		Authorizations: map[string]*workloadv1.Authorization{},
	}
	for _, s := range in.Services {
		if svc := t.service(s); svc != nil {
			snap.Services[ServiceName(svc)] = svc
		}
	}
	for _, ap := range in.AuthorizationPolicies {
		if a := t.authorizationPolicy(ap); a != nil {
			snap.Authorizations[AuthorizationName(a)] = a
		}
	}
	for _, pa := range in.PeerAuthentications {
		if a := t.peerAuthentication(pa); a != nil {
			snap.Authorizations[AuthorizationName(a)] = a
		}
	}
	for _, p := range in.Pods {
		if w := t.workload(p, snap.Authorizations); w != nil {
			snap.Workloads[WorkloadName(w)] = w
		}
	}
	sort.Strings(t.problems)
	snap.Problems = t.problems
	return snap
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
	problems      []string
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
		sort.Slice(l, func(i, j int) bool { return l[i].Name < l[j].Name })
	}
	return t
}

func (t *translator) problem(kind, ns, name, format string, args ...any) {
	t.problems = append(t.problems, fmt.Sprintf("%s %s/%s: %s", kind, ns, name, fmt.Sprintf(format, args...)))
}

func (t *translator) hostname(name, ns string) string {
	return name + "." + ns + ".svc." + t.cfg.ClusterDomain
}
