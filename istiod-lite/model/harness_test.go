package model_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
)

// The semantics tests decide connections the way the mesh does: the policies go through
// model.Translate, a ztunnel on the destination's node gets the Authorizations istiod-lite's xDS
// server scopes to that node (xds/README.md), ztunnel/authz compiles them, and Check decides.

const trustDomain = "cluster.local"

// The cluster every row starts from: the root namespace and two ambient namespaces, with one
// enrolled pod in each (on separate nodes, so that a ztunnel sees only its own pod's policies).
var (
	namespaces = []string{"istio-system", "shop", "other"}
	basePods   = []*corev1.Pod{
		pod("istio-system", "gw", "node-0", "10.0.0.1", map[string]string{"app": "gw"}),
		pod("shop", "web", "node-1", "10.1.0.1", map[string]string{"app": "web", "tier": "front"}),
		pod("other", "db", "node-2", "10.2.0.1", map[string]string{"app": "db"}),
	}
)

func pod(ns, name, node, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Labels: labels,
			Annotations: map[string]string{mesh.AnnotationRedirection: mesh.RedirectionEnabled}},
		Spec:   corev1.PodSpec{NodeName: node, ServiceAccountName: name},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func baseInput() model.Input {
	var in model.Input
	for _, ns := range namespaces {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient, "name": ns}}})
	}
	for _, p := range basePods {
		in.Pods = append(in.Pods, p.DeepCopy())
	}
	return in
}

// withObjects adds the objects of a multi-document YAML to in: AuthorizationPolicies,
// PeerAuthentications, Gateways, Services, Namespaces (replacing one of the same name) and Pods.
func withObjects(t testing.TB, in model.Input, docs string) model.Input {
	t.Helper()
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		decode := func(into any) {
			if err := yaml.Unmarshal([]byte(doc), into); err != nil {
				t.Fatalf("%v in:\n%s", err, doc)
			}
		}
		switch tm.Kind {
		case "AuthorizationPolicy":
			var ap secv1.AuthorizationPolicy
			decode(&ap)
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, &ap)
		case "PeerAuthentication":
			var pa secv1.PeerAuthentication
			decode(&pa)
			in.PeerAuthentications = append(in.PeerAuthentications, &pa)
		case "Gateway":
			var g gwv1.Gateway
			decode(&g)
			in.Gateways = append(in.Gateways, &g)
		case "Service":
			var s corev1.Service
			decode(&s)
			in.Services = append(in.Services, &s)
		case "Namespace":
			var ns corev1.Namespace
			decode(&ns)
			replaced := false
			for i, old := range in.Namespaces {
				if old.Name == ns.Name {
					in.Namespaces[i], replaced = &ns, true
				}
			}
			if !replaced {
				in.Namespaces = append(in.Namespaces, &ns)
			}
		case "Pod":
			var p corev1.Pod
			decode(&p)
			in.Pods = append(in.Pods, &p)
		default:
			t.Fatalf("unknown kind %q in:\n%s", tm.Kind, doc)
		}
	}
	return in
}

// probe is one connection and the decision it must get.
type probe struct {
	to   string // destination pod "<namespace>/<name>"; "shop/web" when empty
	from string // peer identity "<namespace>/<service account>"; "" for a plaintext peer
	ip   string // peer address; "10.9.0.9" when empty
	port uint16 // destination port; 8080 when 0

	allow bool
}

func (p probe) String() string {
	from := p.from
	if from == "" {
		from = "plaintext"
	}
	return from + "@" + p.ipOr() + " → " + p.toOr() + ":" + strconv.Itoa(int(p.portOr()))
}

func (p probe) toOr() string {
	if p.to == "" {
		return "shop/web"
	}
	return p.to
}

func (p probe) ipOr() string {
	if p.ip == "" {
		return "10.9.0.9"
	}
	return p.ip
}

func (p probe) portOr() uint16 {
	if p.port == 0 {
		return 8080
	}
	return p.port
}

// meshView is a translated cluster as the ztunnels see it.
type meshView struct {
	snap     *model.Snapshot
	pods     map[string]*workloadv1.Workload // by "<namespace>/<name>"
	compiled map[string]*authz.Policies      // by node
}

func translate(t testing.TB, in model.Input) *meshView {
	t.Helper()
	v := &meshView{snap: model.Translate(model.DefaultConfig(), in), pods: map[string]*workloadv1.Workload{},
		compiled: map[string]*authz.Policies{}}
	for _, w := range v.snap.Workloads {
		v.pods[w.Namespace+"/"+w.Name] = w
	}
	return v
}

// ztunnelView returns the Authorizations a ztunnel on node receives, by xds/README.md's rule:
// mesh-wide ones, namespace-wide ones of namespaces with a workload on the node, and the ones a
// workload on the node lists by name.
func (v *meshView) ztunnelView(node string) []*workloadv1.Authorization {
	nsOnNode, bound := map[string]bool{}, map[string]bool{}
	for _, w := range v.snap.Workloads {
		if w.Node != node {
			continue
		}
		nsOnNode[w.Namespace] = true
		for _, name := range w.AuthorizationPolicies {
			bound[name] = true
		}
	}
	var out []*workloadv1.Authorization
	for name, a := range v.snap.Authorizations {
		switch a.Scope {
		case workloadv1.Scope_GLOBAL:
		case workloadv1.Scope_NAMESPACE:
			if !nsOnNode[a.Namespace] {
				continue
			}
		default:
			if !bound[name] {
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// decide returns the destination ztunnel's decision for p.
func (v *meshView) decide(t testing.TB, p probe) authz.Decision {
	t.Helper()
	principal := ""
	if p.from != "" {
		ns, sa, _ := strings.Cut(p.from, "/")
		principal = trustDomain + "/ns/" + ns + "/sa/" + sa
	}
	return v.decideConn(t, p.toOr(), authz.Conn{SrcIP: netip.MustParseAddr(p.ipOr()), DstPort: p.portOr(), Principal: principal})
}

// decideConn returns the decision of the ztunnel of pod ("<namespace>/<name>") for c.
func (v *meshView) decideConn(t testing.TB, pod string, c authz.Conn) authz.Decision {
	t.Helper()
	w := v.pods[pod]
	if w == nil {
		t.Fatalf("no workload %s", pod)
	}
	policies, ok := v.compiled[w.Node]
	if !ok {
		var err error
		if policies, err = authz.Compile(v.ztunnelView(w.Node)); err != nil {
			t.Fatalf("ztunnel rejects what istiod-lite sent: %v", err)
		}
		v.compiled[w.Node] = policies
	}
	return policies.Check(authz.TargetOf(w), &c)
}

// problems returns the snapshot's problems as strings.
func (v *meshView) problems() []string {
	var out []string
	for _, p := range v.snap.Problems {
		out = append(out, p.String())
	}
	return out
}

// checkRow runs the probes of a row and checks its problems: with want "", there must be none;
// otherwise one must contain want.
func checkRow(t *testing.T, v *meshView, probes []probe, want string) {
	t.Helper()
	for _, p := range probes {
		if d := v.decide(t, p); d.Allow != p.allow {
			t.Errorf("%v: allow = %v (%s %s), want %v", p, d.Allow, d.Reason, d.Policy, p.allow)
		}
	}
	got := v.problems()
	switch {
	case want == "" && len(got) > 0:
		t.Errorf("unexpected problems:\n%s", strings.Join(got, "\n"))
	case want != "" && !containsAny(got, want):
		t.Errorf("no problem contains %q; problems:\n%s", want, strings.Join(got, "\n"))
	}
}

func containsAny(ss []string, sub string) bool {
	for _, s := range ss {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
