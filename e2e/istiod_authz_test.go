//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
)

const typeService = "type.googleapis.com/ambient.workload.v1.Service"

// TestIstiodOnlyProxiesConfigured: against the real API server, only proxies get configuration.
// An application's service account token (audience istio-ca) is refused an xDS stream, though
// the CA still issues it its own identity; a token for the API server's audience is not accepted
// at all; a ztunnel is configured as before; a waypoint (the service account istiod-lite created
// for a Gateway of class istio-waypoint) gets its bound service and the workloads behind it only.
func TestIstiodOnlyProxiesConfigured(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cs := client(t)
	ist := deployIstiod(t, cs, 1)
	apply(t, "istio-system", []byte(`
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1}
spec:
  nodeName: node-1
  serviceAccountName: ztunnel
  containers: [{name: c, image: ambient/client}]
`))
	ns := newNamespace(t, cs, "authz")
	apply(t, ns, []byte(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: c, image: ambient/client}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, labels: {app: db}}
spec:
  nodeName: node-2
  containers: [{name: c, image: ambient/client}]
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {istio.io/use-waypoint: waypoint}}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {selector: {app: db}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`))
	eventually(t, 90*time.Second, "test pods running", func() bool {
		return running(ctx, cs, "istio-system", "ztunnel-node-1") && running(ctx, cs, ns, "web") && running(ctx, cs, ns, "db")
	})
	pod := func(ns, name string) *corev1.Pod {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	web, db := pod(ns, "web"), pod(ns, "db")

	// An application: no configuration, its own certificate only.
	appCC := ist.dial(t, boundToken(t, cs, web))
	if code := streamCode(ctx, appCC); code != codes.PermissionDenied {
		t.Errorf("an application's xDS stream: %v, want PermissionDenied", code)
	}
	if _, err := cav1.NewCertificateServiceClient(appCC).CreateCertificate(ctx,
		&cav1.CreateCertificateRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/"+ns+"/sa/web")}); err != nil {
		t.Errorf("an application's own certificate: %v", err)
	}
	// A token for the API server (what every pod has mounted) is not a token for istiod-lite.
	if code := streamCode(ctx, ist.dial(t, podToken(t, cs, web, ""))); code != codes.Unauthenticated {
		t.Errorf("an xDS stream with a token of the API server's audience: %v, want Unauthenticated", code)
	}

	// A ztunnel is configured: both workloads arrive.
	zt := xdsStream(t, ctx, ist.dial(t, boundToken(t, cs, pod("istio-system", "ztunnel-node-1"))), "ztunnel-node-1", typeWorkload)
	awaitNames(t, zt, string(web.UID), string(db.UID))

	// A waypoint: once istiod-lite created its service account, a pod running as it gets the
	// bound service's workload, and not db's.
	eventually(t, 60*time.Second, "the waypoint's service account", func() bool {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil
	})
	apply(t, ns, []byte(`
apiVersion: v1
kind: Pod
metadata: {name: waypoint-standin}
spec:
  nodeName: node-2
  serviceAccountName: waypoint
  containers: [{name: c, image: ambient/client}]
`))
	eventually(t, 90*time.Second, "the waypoint stand-in running", func() bool { return running(ctx, cs, ns, "waypoint-standin") })
	wpCC := ist.dial(t, boundToken(t, cs, pod(ns, "waypoint-standin")))
	wp := xdsStream(t, ctx, wpCC, "waypoint", typeWorkload)
	got := awaitNames(t, wp, string(web.UID))
	if got[string(db.UID)] {
		t.Errorf("the waypoint received db, which is not bound to it")
	}
	svcs := xdsStream(t, ctx, wpCC, "waypoint", typeService)
	if got := awaitNames(t, svcs, ns+"/web."+ns+".svc.cluster.local"); len(got) != 1 {
		t.Errorf("the waypoint's services: %v, want its bound service only", got)
	}
}

// streamCode opens an xDS stream and returns the code it ends with.
func streamCode(ctx context.Context, cc *grpc.ClientConn) codes.Code {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return status.Code(err)
	}
	_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeWorkload}) // io.EOF once refused
	_, err = st.Recv()
	return status.Code(err)
}

// xdsStream opens a wildcard stream of typ.
func xdsStream(t *testing.T, ctx context.Context, cc *grpc.ClientConn, id, typ string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: typ}); err != nil {
		t.Fatal(err)
	}
	return st
}

// awaitNames receives and ACKs responses until every name in want has arrived (istiod-lite may
// push pod IPs after the first response), and returns every name received.
func awaitNames(t *testing.T, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, want ...string) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	pending := map[string]bool{}
	for _, n := range want {
		pending[n] = true
	}
	for len(pending) > 0 {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("waiting for %v: %v", pending, err)
		}
		for _, res := range r.Resources {
			got[res.Name] = true
			delete(pending, res.Name)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}
	return got
}
