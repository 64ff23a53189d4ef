package report

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// records is a slog handler that keeps what is logged.
type records struct {
	mu  sync.Mutex
	got []map[string]string // message under "msg", level under "level"
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message, "level": rec.Level.String()}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	return nil
}

func (r *records) take() []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got
	r.got = nil
	return out
}

func problem(kind, ns, name, msg string) model.Problem {
	return model.Problem{Kind: kind, Namespace: ns, Name: name, Reason: model.ReasonInvalidValue, Message: msg}
}

// A problem is logged once, with the object's kind, namespace and name, while it stays the same;
// again when it changes; and its end is logged once.
func TestLogOncePerChange(t *testing.T) {
	rec := &records{}
	l := NewLog(slog.New(rec))
	a := problem(model.KindAuthorizationPolicy, "shop", "p", "rule 0: bad port")
	b := problem(model.KindPod, "shop", "web", "bad pod IP")
	summary := func() []string {
		var out []string
		for _, r := range rec.take() {
			out = append(out, r["level"]+" "+r["kind"]+" "+r["namespace"]+"/"+r["name"]+" "+r["problems"])
		}
		return out
	}
	l.Report([]model.Problem{a, b})
	if diff := cmp.Diff([]string{
		"WARN AuthorizationPolicy shop/p rule 0: bad port",
		"WARN Pod shop/web bad pod IP",
	}, summary()); diff != "" {
		t.Errorf("first report (-want +got):\n%s", diff)
	}
	l.Report([]model.Problem{a, b})
	if got := summary(); len(got) != 0 {
		t.Errorf("unchanged problems logged again: %q", got)
	}
	a2 := a
	a2.Message = "rule 0: bad port; rule 1: methods"
	l.Report([]model.Problem{a2})
	if diff := cmp.Diff([]string{
		"WARN AuthorizationPolicy shop/p rule 0: bad port; rule 1: methods",
		"INFO Pod shop/web ",
	}, summary()); diff != "" {
		t.Errorf("after a change (-want +got):\n%s", diff)
	}
}

// The cluster of the Writer tests: objects with and without problems of every kind the Writer
// writes a condition on, and some it only writes Events for.
func cluster() model.Input {
	meta := func(ns, name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID("uid-" + ns + "-" + name), ResourceVersion: "1", Generation: 2}
	}
	sel := &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}
	svc := func(name string, labels map[string]string) *corev1.Service {
		s := &corev1.Service{ObjectMeta: meta("shop", name), Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			ClusterIP: "10.96.0.9", Ports: []corev1.ServicePort{{Port: 80}}}}
		s.Labels = labels
		return s
	}
	stale := svc("plain", nil)
	stale.Status.Conditions = []metav1.Condition{{Type: model.ConditionWaypointBound, Status: metav1.ConditionTrue, Reason: "Bound", Message: "bound to waypoint shop/old"}}
	return model.Input{
		Namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "shop", UID: "uid-shop", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "bad", UID: "uid-bad", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient, mesh.LabelUseWaypoint: "nope"}}},
		},
		Pods: []*corev1.Pod{{ObjectMeta: meta("bad", "pod"), Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.1"}}},
		Gateways: []*gwv1.Gateway{{ObjectMeta: meta("shop", "wp"), Spec: gwv1.GatewaySpec{GatewayClassName: mesh.WaypointGatewayClass,
			Listeners: []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}},
		Services: []*corev1.Service{
			svc("bound", map[string]string{mesh.LabelUseWaypoint: "wp"}),
			svc("unbound", map[string]string{mesh.LabelUseWaypoint: "nope"}),
			stale,
		},
		AuthorizationPolicies: []*secv1.AuthorizationPolicy{
			{ObjectMeta: meta("shop", "good"), Spec: secapi.AuthorizationPolicy{Selector: sel, Rules: []*secapi.Rule{{
				From: []*secapi.Rule_From{{Source: &secapi.Source{Namespaces: []string{"other"}}}}}}}},
			{ObjectMeta: meta("shop", "narrowed"), Spec: secapi.AuthorizationPolicy{Action: secapi.AuthorizationPolicy_DENY, Rules: []*secapi.Rule{{
				To: []*secapi.Rule_To{{Operation: &secapi.Operation{Paths: []string{"/admin"}}}}}}}},
			{ObjectMeta: meta("shop", "l7"), Spec: secapi.AuthorizationPolicy{
				TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "bound"}}}},
		},
		RequestAuthentications: []*secv1.RequestAuthentication{
			{ObjectMeta: meta("shop", "jwt"), Spec: secapi.RequestAuthentication{
				TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "bound"}},
				JwtRules:   []*secapi.JWTRule{{Issuer: "https://issuer.example", Jwks: `{"keys": []}`}}}},
			{ObjectMeta: meta("shop", "sidecar"), Spec: secapi.RequestAuthentication{Selector: sel,
				JwtRules: []*secapi.JWTRule{{Issuer: "https://issuer.example", Jwks: `{"keys": []}`}}}},
		},
		PeerAuthentications: []*secv1.PeerAuthentication{
			{ObjectMeta: meta("istio-system", "default"), Spec: secapi.PeerAuthentication{Mtls: &secapi.PeerAuthentication_MutualTLS{Mode: secapi.PeerAuthentication_MutualTLS_STRICT}}},
			{ObjectMeta: meta("istio-system", "gw"), Spec: secapi.PeerAuthentication{Selector: sel}},
		},
		HTTPRoutes: []*gwv1.HTTPRoute{{ObjectMeta: meta("shop", "r"), Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: "bound"}}},
			Rules:           []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: gwv1.BackendRef{BackendObjectReference: gwv1.BackendObjectReference{Name: "gone"}}}}}}}}},
	}
}

func ptr[T any](v T) *T { return &v }

// fakes holds the cluster in fake clientsets, as the API server would.
type fakes struct {
	kube  *kubefake.Clientset
	istio *istiofake.Clientset
}

func newFakes(in model.Input) fakes {
	var kube, istio []runtime.Object
	for _, s := range in.Services {
		kube = append(kube, s)
	}
	for _, o := range in.AuthorizationPolicies {
		istio = append(istio, o)
	}
	for _, o := range in.PeerAuthentications {
		istio = append(istio, o)
	}
	for _, o := range in.RequestAuthentications {
		istio = append(istio, o)
	}
	return fakes{kube: kubefake.NewClientset(kube...), istio: istiofake.NewSimpleClientset(istio...)}
}

// refresh reads the objects the Writer writes back into in, as the informers would.
func (f fakes) refresh(t *testing.T, in *model.Input) {
	t.Helper()
	ctx := context.Background()
	for i, s := range in.Services {
		got, err := f.kube.CoreV1().Services(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in.Services[i] = got
	}
	for i, o := range in.AuthorizationPolicies {
		got, err := f.istio.SecurityV1().AuthorizationPolicies(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in.AuthorizationPolicies[i] = got
	}
	for i, o := range in.PeerAuthentications {
		got, err := f.istio.SecurityV1().PeerAuthentications(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in.PeerAuthentications[i] = got
	}
	for i, o := range in.RequestAuthentications {
		got, err := f.istio.SecurityV1().RequestAuthentications(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in.RequestAuthentications[i] = got
	}
}

// writes counts the creates and updates the fakes have seen, and forgets them.
func (f fakes) writes() []string {
	var out []string
	for _, a := range append(f.kube.Actions(), f.istio.Actions()...) {
		switch a.GetVerb() {
		case "create", "update", "patch":
			out = append(out, a.GetVerb()+" "+a.GetResource().Resource+"/"+a.GetSubresource()+" "+a.GetNamespace()+"/"+name(a))
		}
	}
	f.kube.ClearActions()
	f.istio.ClearActions()
	slices.Sort(out)
	return out
}

func name(a k8stesting.Action) string {
	// Creates and updates both carry the object.
	if a, ok := a.(interface{ GetObject() runtime.Object }); ok {
		if m, err := apimeta.Accessor(a.GetObject()); err == nil {
			return m.GetName()
		}
	}
	return ""
}

type eventSummary struct{ Namespace, Kind, Object, UID, Type, Reason, Message string }

func (f fakes) events(t *testing.T) []eventSummary {
	t.Helper()
	list, err := f.kube.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []eventSummary
	for _, e := range list.Items {
		if e.Source.Component != Component || e.ReportingController != Component || e.ReportingInstance != "istiod-0" {
			t.Errorf("event %s from %+v / %s %s", e.Name, e.Source, e.ReportingController, e.ReportingInstance)
		}
		out = append(out, eventSummary{e.Namespace, e.InvolvedObject.Kind, e.InvolvedObject.Namespace + "/" + e.InvolvedObject.Name,
			string(e.InvolvedObject.UID), e.Type, e.Reason, e.Message})
	}
	slices.SortFunc(out, func(a, b eventSummary) int { return strings.Compare(a.Kind+a.Object, b.Kind+b.Object) })
	return out
}

type condSummary struct{ Type, Status, Reason, Message string }

// Every problem becomes an Event on its object, once per change; every AuthorizationPolicy,
// PeerAuthentication and bound Service gets its condition, written only when it differs.
func TestWriter(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := t0
	in := cluster()
	f := newFakes(in)
	w := NewWriter(f.kube, f.istio, "istiod-0", func() time.Time { return now })
	translate := func() *model.Snapshot { return model.Translate(model.DefaultConfig(), in) }

	if err := w.Reconcile(ctx, in, translate()); err != nil {
		t.Fatal(err)
	}
	// Events: one per object with problems, on the object, Warning, with the first problem's reason.
	if diff := cmp.Diff([]eventSummary{
		{"shop", "AuthorizationPolicy", "shop/narrowed", "uid-shop-narrowed", "Warning", "UnsupportedValue",
			"rule 0: ztunnel cannot enforce paths (a waypoint can): the rule is enforced without them, so it denies more than requested"},
		{"shop", "HTTPRoute", "shop/r", "uid-shop-r", "Warning", "BackendNotFound", "backend Service shop/gone not found"},
		{"default", "Namespace", "/bad", "uid-bad", "Warning", "WaypointNotFound",
			"waypoint bad/nope (a Gateway of class istio-waypoint) not found: traffic goes directly"},
		{"istio-system", "PeerAuthentication", "istio-system/gw", "uid-istio-system-gw", "Warning", "Ignored",
			"a PeerAuthentication with a selector in the root namespace is ignored (mesh-wide policy has no selector)"},
		{"shop", "RequestAuthentication", "shop/sidecar", "uid-shop-sidecar", "Warning", "UnsupportedValue",
			"a selector-bound RequestAuthentication needs a sidecar; in ambient, target a waypoint"},
		{"shop", "Service", "shop/unbound", "uid-shop-unbound", "Warning", "WaypointNotFound",
			"waypoint shop/nope (a Gateway of class istio-waypoint) not found: traffic goes directly"},
	}, f.events(t)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// Conditions, as Istio writes them on security objects, and WaypointBound on Services.
	f.refresh(t, &in)
	checkConds := func(what string) {
		t.Helper()
		got := map[string]condSummary{}
		for _, ap := range in.AuthorizationPolicies {
			for _, c := range ap.Status.GetConditions() {
				got["AuthorizationPolicy "+ap.Name] = condSummary{c.Type, c.Status, c.Reason, c.Message}
				if c.ObservedGeneration != 2 || !c.LastTransitionTime.AsTime().Equal(t0) {
					t.Errorf("%s: AuthorizationPolicy %s: observedGeneration %d, lastTransitionTime %v", what, ap.Name, c.ObservedGeneration, c.LastTransitionTime.AsTime())
				}
			}
		}
		for _, pa := range in.PeerAuthentications {
			for _, c := range pa.Status.GetConditions() {
				got["PeerAuthentication "+pa.Name] = condSummary{c.Type, c.Status, c.Reason, c.Message}
			}
		}
		for _, ra := range in.RequestAuthentications {
			for _, c := range ra.Status.GetConditions() {
				got["RequestAuthentication "+ra.Name] = condSummary{c.Type, c.Status, c.Reason, c.Message}
			}
		}
		for _, s := range in.Services {
			for _, c := range s.Status.Conditions {
				got["Service "+s.Name] = condSummary{c.Type, string(c.Status), c.Reason, c.Message}
			}
		}
		if diff := cmp.Diff(map[string]condSummary{
			"AuthorizationPolicy good":      {"ZtunnelAccepted", "True", "Accepted", "attached to ztunnel"},
			"AuthorizationPolicy narrowed":  {"ZtunnelAccepted", "True", "UnsupportedValue", "rule 0: ztunnel cannot enforce paths (a waypoint can): the rule is enforced without them, so it denies more than requested"},
			"AuthorizationPolicy l7":        {"WaypointAccepted", "True", "Accepted", "attached to waypoint"},
			"PeerAuthentication default":    {"ZtunnelAccepted", "True", "Accepted", "attached to ztunnel"},
			"PeerAuthentication gw":         {"ZtunnelAccepted", "False", "Ignored", "a PeerAuthentication with a selector in the root namespace is ignored (mesh-wide policy has no selector)"},
			"RequestAuthentication jwt":     {"WaypointAccepted", "True", "Accepted", "attached to waypoint"},
			"RequestAuthentication sidecar": {"ZtunnelAccepted", "False", "UnsupportedValue", "a selector-bound RequestAuthentication needs a sidecar; in ambient, target a waypoint"},
			"Service bound":                 {"istio.io/WaypointBound", "True", "Bound", "bound to waypoint shop/wp.shop.svc.cluster.local"},
			"Service unbound":               {"istio.io/WaypointBound", "False", "WaypointNotFound", "waypoint shop/nope (a Gateway of class istio-waypoint) not found: traffic goes directly"},
		}, got); diff != "" {
			t.Errorf("%s: conditions (-want +got):\n%s", what, diff)
		}
	}
	checkConds("first pass")
	f.writes()

	// Nothing changed: no write, no Event.
	now = t0.Add(time.Minute)
	if err := w.Reconcile(ctx, in, translate()); err != nil {
		t.Fatal(err)
	}
	if got := f.writes(); len(got) != 0 {
		t.Errorf("second pass over an unchanged cluster wrote:\n%s", strings.Join(got, "\n"))
	}

	// The narrowed policy is fixed: its condition says so (its status did not change, so neither
	// does its transition time), and no Event is written for it.
	for _, ap := range in.AuthorizationPolicies {
		if ap.Name == "narrowed" {
			ap.Spec.Rules[0].To[0].Operation = &secapi.Operation{Ports: []string{"9090"}}
		}
	}
	if err := w.Reconcile(ctx, in, translate()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"update authorizationpolicies/status shop/narrowed"}, f.writes()); diff != "" {
		t.Errorf("writes once a policy is fixed (-want +got):\n%s", diff)
	}
	f.refresh(t, &in)
	for _, ap := range in.AuthorizationPolicies {
		if ap.Name == "narrowed" {
			c := ap.Status.GetConditions()[0]
			if c.Reason != "Accepted" || !c.LastTransitionTime.AsTime().Equal(t0) {
				t.Errorf("fixed policy: %v", c)
			}
		}
	}

	// A new leader term writes the Events of the problems there are again.
	w.Reset()
	if err := w.Reconcile(ctx, in, translate()); err != nil {
		t.Fatal(err)
	}
	if got := f.writes(); len(got) != 5 {
		t.Errorf("a new term wrote %d Events, want one per object with problems (5):\n%s", len(got), strings.Join(got, "\n"))
	}
}
