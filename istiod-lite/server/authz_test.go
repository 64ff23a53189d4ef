package server

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

// TestOnlyProxiesGetConfiguration: an application's service account is refused configuration
// (it would list every workload of the mesh) but still gets its own certificate; a waypoint's
// service account gets what its bound service needs.
func TestOnlyProxiesGetConfiguration(t *testing.T) {
	bound := testPod("web-1", "uid-web-1", "web", "node-a", "10.1.0.5")
	bound.Labels = map[string]string{"app": "web"}
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		bound, testPod("db-1", "uid-db-1", "db", "node-b", "10.2.0.5"),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: map[string]string{"istio.io/use-waypoint": "waypoint"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Port: 80}}}},
	)
	users := map[string]string{"app": "system:serviceaccount:shop:web", "waypoint": "system:serviceaccount:shop:waypoint"}
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if u, ok := users[tr.Spec.Token]; ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: u}}
		}
		return true, tr, nil
	})
	gw := gwfake.NewSimpleClientset()
	if err := gw.Tracker().Create(schema.GroupVersion(gwv1.GroupVersion).WithResource("gateways"), &gwv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "waypoint", UID: "uid-gw"},
		Spec: gwv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, "shop"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.LeaderElection = false
	a := startRun(t, cfg, fakeClients(kube, istiofake.NewSimpleClientset(), gw))
	ctx := context.Background()

	app, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialGRPC(t, a, kube, "app")).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = app.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xds.TypeWorkload}) // io.EOF if already refused
	if _, err := app.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an application's configuration stream: %v, want PermissionDenied", err)
	}
	if _, err := cav1.NewCertificateServiceClient(dialGRPC(t, a, kube, "app")).CreateCertificate(ctx,
		&cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")}); err != nil {
		t.Errorf("an application's own certificate: %v", err)
	}

	wp := dialXDS(t, a, kube, "waypoint")
	r, err := wp.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-web-1" {
		t.Errorf("waypoint's workloads %q, want only the one behind its bound service", got)
	}
	if err := wp.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "waypoint"}, TypeUrl: xds.TypeService}); err != nil {
		t.Fatal(err)
	}
	if r, err = wp.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "shop/web.shop.svc.cluster.local" {
		t.Errorf("waypoint's services %q", got)
	}
}
