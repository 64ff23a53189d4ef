package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/status"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/controller"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

func TestMain(m *testing.M) {
	// The fake clientsets do not stream initial events with a bookmark; use list+watch.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	// Run owns listeners, streams and informers: all must be gone when it returns. klog's flush
	// daemon is process-wide and started by client-go on import.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"))
}

func testPod(name, uid, sa, node, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: k8stypes.UID(uid),
			Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
		Spec:   corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// TestRun starts istiod-lite on fake clientsets and talks to it as a ztunnel would: over TLS,
// authenticated by token, for a certificate and for configuration.
func TestRun(t *testing.T) {
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		testPod("web-1", "uid-web-1", "web", "node-a", "10.1.0.5"),
		testPod("db-1", "uid-db-1", "db", "node-b", "10.2.0.5"),
	)
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if tr.Spec.Token == "ztunnel-a" {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra:    map[string]authnv1.ExtraValue{"authentication.kubernetes.io/node-name": {"node-a"}},
			}}
		}
		return true, tr, nil
	})
	cfg := Default()
	cfg.GRPCAddr, cfg.AdminAddr, cfg.MetricsAddr, cfg.ReadyAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.PodName = "istiod-lite-0" // leader election on: the fake clientset serves Leases
	cfg.DebounceQuiet, cfg.DebounceMax = 10*time.Millisecond, 100*time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}

	gw := gwfake.NewSimpleClientset()
	if err := gw.Tracker().Create(schema.GroupVersion(gwv1.GroupVersion).WithResource("gateways"), &gwv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "waypoint", UID: "uid-gw"},
		Spec: gwv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, "shop"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.DiscardHandler), cfg, fakeClients(kube, istiofake.NewSimpleClientset(), gw),
			func(a Addrs) { addrs <- a })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	var a Addrs
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not started")
	}

	testutil.Eventually(t, 10*time.Second, "the readiness endpoint to say ok", func() bool { return httpGet(t, "http://"+a.Ready+"/") == "ok\n" })

	// The root is in the Secret; the serving certificate chains to it.
	secret, err := kube.CoreV1().Secrets("istio-system").Get(ctx, ca.SelfSignedSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(secret.Data[ca.KeyCACert])
	cc, err := grpc.NewClient(a.GRPC,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod-lite.istio-system.svc"})),
		grpc.WithPerRPCCredentials(bearer("ztunnel-a")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	resp, err := cav1.NewCertificateServiceClient(cc).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")})
	if err != nil {
		t.Fatalf("CreateCertificate for a pod on the ztunnel's node: %v", err)
	}
	if len(resp.CertChain) != 2 {
		t.Errorf("chain of %d certificates", len(resp.CertChain))
	}
	if _, err := cav1.NewCertificateServiceClient(cc).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/db")}); err == nil {
		t.Error("CreateCertificate for a pod on another node succeeded")
	}

	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel-node-a"}, TypeUrl: xds.TypeWorkload}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-db-1,uid-web-1" {
		t.Errorf("initial workloads %q", got)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}

	// The trust bundle carries the CA's root.
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xds.TypeTrustBundle}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	var tb cav1.TrustBundle
	if len(r.Resources) != 1 || r.Resources[0].Name != xds.TrustBundleName || r.Resources[0].Resource.UnmarshalTo(&tb) != nil ||
		len(tb.Roots) != 1 || tb.Roots[0] != string(secret.Data[ca.KeyCACert]) {
		t.Errorf("trust bundle response %v", r)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}

	// A new pod arrives as a delta of one.
	if _, err := kube.CoreV1().Pods("shop").Create(ctx, testPod("web-2", "uid-web-2", "web", "node-a", "10.1.0.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-web-2" || len(r.RemovedResources) != 0 {
		t.Errorf("delta after a pod was created: %q removed %v", got, r.RemovedResources)
	}

	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}

	// Taking the namespace out of the mesh changes every workload in it (no more HBONE).
	ns, err := kube.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(ns.Labels, "istio.io/dataplane-mode")
	if _, err := kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-db-1,uid-web-1,uid-web-2" {
		t.Errorf("delta after unlabelling the namespace: %q", got)
	}

	if got := httpGet(t, "http://"+a.Admin+"/debug/connections"); !strings.Contains(got, "ztunnel-node-a") {
		t.Errorf("connections page lacks the client:\n%s", got)
	}
	if got := httpGet(t, "http://"+a.Admin+"/debug/config_dump"); !strings.Contains(got, "uid-web-2") {
		t.Errorf("config dump lacks the new workload:\n%s", got)
	}
	if got := httpGet(t, "http://"+a.Metrics+"/metrics"); !strings.Contains(got, "istiod_lite_ca_certificates_issued_total") {
		t.Errorf("metrics lack CA issuance")
	}
	var sum status.Istiod
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+a.Metrics+status.Path)), &sum); err != nil {
		t.Fatal(err)
	}
	if len(sum.Proxies) != 1 || sum.Proxies[0].ID != "ztunnel-node-a" || !sum.Proxies[0].UpToDate ||
		sum.RootNotAfter.Before(time.Now()) || sum.Version == "" {
		t.Errorf("status on the metrics port: %+v", sum)
	}
	// Cluster writes happen once this replica leads.
	testutil.Eventually(t, 10*time.Second, "the leader lease held by istiod-lite-0", func() bool {
		lease, err := kube.CoordinationV1().Leases("istio-system").Get(ctx, "istiod-lite-leader", metav1.GetOptions{})
		return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == "istiod-lite-0"
	})
	testutil.Eventually(t, 10*time.Second, "the waypoint Deployment", func() bool {
		_, err := kube.AppsV1().Deployments("shop").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil
	})
	rootsPublished := func() bool {
		cm, err := kube.CoreV1().ConfigMaps("shop").Get(ctx, ca.RootConfigMap, metav1.GetOptions{})
		return err == nil && cm.Data[ca.RootConfigMapKey] == string(secret.Data[ca.KeyCACert])
	}
	testutil.Eventually(t, 10*time.Second, "the root ConfigMap published", rootsPublished)

	// A root ConfigMap edited or deleted by hand is rewritten at once, not at a resync.
	cm, err := kube.CoreV1().ConfigMaps("shop").Get(ctx, ca.RootConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[ca.RootConfigMapKey] = "edited"
	if _, err := kube.CoreV1().ConfigMaps("shop").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the edited root ConfigMap rewritten", rootsPublished)
	if err := kube.CoreV1().ConfigMaps("shop").Delete(ctx, ca.RootConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the deleted root ConfigMap rewritten", rootsPublished)
}

// fakeClients uses the same fake clientsets for every kind of traffic.
func fakeClients(kube *kubefake.Clientset, istio *istiofake.Clientset, gw *gwfake.Clientset) clients {
	return clients{
		watch:  controller.Clients{Kube: kube, Istio: istio, Gateway: gw},
		write:  writeClients{Kube: kube, Gateway: gw, Istio: istio},
		review: kube,
		lease:  kube,
	}
}

func names(r *discoveryv3.DeltaDiscoveryResponse) string {
	var out []string
	for _, res := range r.Resources {
		out = append(out, res.Name)
	}
	return strings.Join(out, ",")
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func csr(t *testing.T, id string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestPublishRootsWriteLimit: a root ConfigMap that something else keeps changing is rewritten at
// most rootWriteBurst times in a row, not at every push (here the controller's cache, never
// started, always reports it missing).
func TestPublishRootsWriteLimit(t *testing.T) {
	kube := kubefake.NewClientset()
	ctl, err := controller.New(slog.New(slog.DiscardHandler), controller.Clients{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gwfake.NewSimpleClientset()})
	if err != nil {
		t.Fatal(err)
	}
	in := model.Input{Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}}}
	cfg := Default()
	lw := newLeaderWork(slog.New(slog.DiscardHandler), cfg, writeClients{Kube: kube, Gateway: gwfake.NewSimpleClientset(), Istio: istiofake.NewSimpleClientset()}, ctl)
	for range 3 * rootWriteBurst {
		lw.publishRoots(context.Background(), in, "roots")
	}
	gets := 0
	for _, a := range kube.Actions() {
		if a.GetResource().Resource == "configmaps" && a.GetVerb() == "get" {
			gets++
		}
	}
	if gets != rootWriteBurst {
		t.Errorf("%d ConfigMap reads after %d pushes, want %d (the burst)", gets, 3*rootWriteBurst, rootWriteBurst)
	}
	// A namespace that is gone drops its limiter.
	lw.publishRoots(context.Background(), model.Input{}, "roots")
	if len(lw.rootLimits) != 0 {
		t.Errorf("limiters of deleted namespaces kept: %v", lw.rootLimits)
	}
}
