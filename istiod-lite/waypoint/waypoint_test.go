package waypoint

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

func gateway(name string, port gwv1.PortNumber) *gwv1.Gateway {
	return &gwv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Generation: 1},
		Spec: gwv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gwv1.Listener{{Name: "mesh", Port: port, Protocol: "HBONE"}}},
	}
}

// gatewayClient is a fake Gateway API client holding gs.
func gatewayClient(t *testing.T, gs ...*gwv1.Gateway) *gwfake.Clientset {
	t.Helper()
	gw := gwfake.NewSimpleClientset()
	for _, g := range gs {
		if err := gw.Tracker().Create(schema.GroupVersion(gwv1.GroupVersion).WithResource("gateways"), g, g.Namespace); err != nil {
			t.Fatal(err)
		}
	}
	return gw
}

func TestReconcile(t *testing.T) {
	ctx := context.Background()
	good, bad := gateway("wp", 15008), gateway("broken", 80)
	other := gateway("ingress", 15008)
	other.Spec.GatewayClassName = "nginx"
	gw := gatewayClient(t, good, bad, other)
	kube := kubefake.NewClientset()
	r := New(kube, gw, Proxy{Image: "ambient/waypoint:test"}, "cluster.local")
	if err := r.Reconcile(ctx, []*gwv1.Gateway{good, bad, other}); err != nil {
		t.Fatal(err)
	}

	dep, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dep.OwnerReferences) != 1 || dep.OwnerReferences[0].UID != good.UID {
		t.Errorf("deployment owners = %v", dep.OwnerReferences)
	}
	if dep.Spec.Template.Spec.ServiceAccountName != "wp" || dep.Spec.Template.Spec.Containers[0].Image != "ambient/waypoint:test" {
		t.Errorf("deployment pod spec = %+v", dep.Spec.Template.Spec)
	}
	if _, err := kube.CoreV1().Services("shop").Get(ctx, "wp", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts("shop").Get(ctx, "wp", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
	for name, want := range map[string]metav1.ConditionStatus{"wp": metav1.ConditionTrue, "broken": metav1.ConditionFalse} {
		g, err := gw.GatewayV1().Gateways("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c := meta.FindStatusCondition(g.Status.Conditions, "Programmed"); c == nil || c.Status != want {
			t.Errorf("%s: Programmed = %+v, want %s", name, c, want)
		}
	}
	if _, err := kube.AppsV1().Deployments("shop").Get(ctx, "broken", metav1.GetOptions{}); err == nil {
		t.Error("deployed a waypoint without an HBONE listener")
	}
	if _, err := kube.AppsV1().Deployments("shop").Get(ctx, "ingress", metav1.GetOptions{}); err == nil {
		t.Error("deployed a Gateway of another class")
	}

	// An unchanged Gateway costs no API calls.
	kube.ClearActions()
	if err := r.Reconcile(ctx, []*gwv1.Gateway{good, bad, other}); err != nil {
		t.Fatal(err)
	}
	if n := len(kube.Actions()); n != 0 {
		t.Errorf("second pass made %d API calls", n)
	}

	// A Deployment deleted by hand, reported by the controller's watch, is back at the next pass.
	if err := kube.AppsV1().Deployments("shop").Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Repair("shop/wp")
	if err := r.Reconcile(ctx, []*gwv1.Gateway{good, bad, other}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{}); err != nil {
		t.Errorf("deployment not restored after a repair request: %v", err)
	}

	// Without a watch event, it is back after the next resync.
	if err := kube.AppsV1().Deployments("shop").Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(Resync + time.Second)
	r.now = func() time.Time { return later }
	if err := r.Reconcile(ctx, []*gwv1.Gateway{good, bad, other}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{}); err != nil {
		t.Errorf("deployment not restored after resync: %v", err)
	}
}

func TestDoesNotTakeOver(t *testing.T) {
	g := gateway("wp", 15008)
	kube := kubefake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "shop"}})
	r := New(kube, gwfake.NewSimpleClientset(), Proxy{Image: "img"}, "cluster.local")
	err := r.Reconcile(context.Background(), []*gwv1.Gateway{g})
	if err == nil || !strings.Contains(err.Error(), "not owned by the Gateway") {
		t.Fatalf("got %v, want a refusal to take over", err)
	}
}

// A waypoint's pods opt out of the mesh, so that the node agent never captures the waypoint's own
// traffic, even in an ambient namespace; a Deployment written by an older istiod-lite gets the
// label at the next pass, and its selector (immutable) is left as it was.
func TestWaypointPodsOptOutOfTheMesh(t *testing.T) {
	ctx := context.Background()
	g := gateway("wp", 15008)
	_, oldDep, _ := Desired(g, Proxy{Image: "img"}, g.Spec.Listeners[0])
	delete(oldDep.Spec.Template.Labels, mesh.LabelDataplaneMode) // as written before the label
	kube := kubefake.NewClientset(oldDep)
	gw := gatewayClient(t, g)
	if err := New(kube, gw, Proxy{Image: "img"}, "cluster.local").Reconcile(ctx, []*gwv1.Gateway{g}); err != nil {
		t.Fatal(err)
	}
	dep, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := dep.Spec.Template.Labels[mesh.LabelDataplaneMode]; got != mesh.DataplaneModeNone {
		t.Errorf("pod template %s = %q, want %q", mesh.LabelDataplaneMode, got, mesh.DataplaneModeNone)
	}
	if _, ok := dep.Spec.Selector.MatchLabels[mesh.LabelDataplaneMode]; ok {
		t.Errorf("selector %v carries %s: a Deployment's selector cannot change", dep.Spec.Selector.MatchLabels, mesh.LabelDataplaneMode)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Labels: dep.Spec.Template.Labels}}
	ambient := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}}
	if model.InMesh(ambient, pod) {
		t.Error("a waypoint pod in an ambient namespace is in the mesh")
	}
	if !labels.SelectorFromSet(dep.Spec.Selector.MatchLabels).Matches(labels.Set(pod.Labels)) {
		t.Error("the Deployment's selector does not select its own pods")
	}
}

// The mesh's tracing settings reach each waypoint's command line, and an istiod-lite started
// with other settings rewrites the Deployments it finds.
func TestWaypointTracingSettings(t *testing.T) {
	ctx := context.Background()
	g := gateway("wp", 15008)
	gw := gatewayClient(t, g)
	kube := kubefake.NewClientset()
	args := func() []string {
		dep, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return dep.Spec.Template.Spec.Containers[0].Args
	}
	traced := Proxy{Image: "img", TracingEndpoint: "otel.observability:4317", TracingSampling: 2.5}
	if err := New(kube, gw, traced, "cluster.local").Reconcile(ctx, []*gwv1.Gateway{g}); err != nil {
		t.Fatal(err)
	}
	want := []string{"--gateway=shop/wp", "--tracing-endpoint=otel.observability:4317", "--tracing-sampling=2.5"}
	if got := args(); !slices.Equal(got, want) {
		t.Errorf("args %q, want %q", got, want)
	}
	// A new istiod-lite without tracing (a fresh reconciler checks everything).
	if err := New(kube, gw, Proxy{Image: "img"}, "cluster.local").Reconcile(ctx, []*gwv1.Gateway{g}); err != nil {
		t.Fatal(err)
	}
	if got := args(); !slices.Equal(got, []string{"--gateway=shop/wp"}) {
		t.Errorf("args %q after tracing was turned off", got)
	}
}

// A waypoint runs on one core unless its Gateway's proxy.istio.io/config sets concurrency; a
// changed annotation (which does not move the generation) is applied at the next pass, and one
// that cannot be read is named in the Gateway's status while the waypoint keeps what it runs with.
func TestWaypointConcurrency(t *testing.T) {
	ctx := context.Background()
	g := gateway("wp", 15008)
	gw := gatewayClient(t, g)
	kube := kubefake.NewClientset()
	r := New(kube, gw, Proxy{Image: "img"}, "cluster.local")
	for _, tc := range []struct {
		annotation *string // nil: none
		want       string  // GOMAXPROCS; "" for none
		status     string  // in the Programmed message
	}{
		{nil, "1", "waypoint deployed"},
		{ptr("concurrency: 2\nholdApplicationUntilProxyStarts: true"), "2", "waypoint deployed"},
		{ptr("concurrency: many"), "2", `concurrency "many" is not a whole number; kept GOMAXPROCS=2`},
		{ptr(`{"concurrency": 0}`), "", "waypoint deployed"},
		{ptr("concurrency: -2"), "", "concurrency -2 is negative; kept every core the cgroup allows"},
		{ptr(`{"tracing": {}}`), "1", "waypoint deployed"},
		{ptr(`{"concurrency": "3"}`), "3", "waypoint deployed"},
	} {
		g.Annotations = nil
		if tc.annotation != nil {
			g.Annotations = map[string]string{mesh.AnnotationProxyConfig: *tc.annotation}
		}
		if err := r.Reconcile(ctx, []*gwv1.Gateway{g}); err != nil {
			t.Fatal(err)
		}
		dep, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "GOMAXPROCS" {
				got = e.Value
			}
		}
		if got != tc.want {
			t.Errorf("annotation %q: GOMAXPROCS %q, want %q", g.Annotations, got, tc.want)
		}
		st, err := gw.GatewayV1().Gateways("shop").Get(ctx, "wp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := meta.FindStatusCondition(st.Status.Conditions, "Programmed")
		good := tc.status == "waypoint deployed"
		if c == nil || c.Status != metav1.ConditionTrue || (good && c.Message != tc.status) || (!good && !strings.HasSuffix(c.Message, tc.status)) {
			t.Errorf("annotation %q: Programmed = %+v, want True with %q", g.Annotations, c, tc.status)
		}
	}
}
