//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/e2e/lab"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const typeWorkload = "type.googleapis.com/ambient.workload.v1.Workload"

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// TestIstiodLite runs istiod-lite in the lab against the real API server and talks to it as the
// ztunnel of node-1 would: from node-1's network, with a token bound to a pod on node-1.
func TestIstiodLite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	for _, f := range []string{"../deploy/crds/istio-security.yaml", "../deploy/crds/gateway-api.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		apply(t, "default", b)
	}
	apply(t, "default", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n"))
	b, err := os.ReadFile("../deploy/istiod-lite/istiod-lite.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, "istio-system", b)
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), "istio-system", metav1.DeleteOptions{})
	})
	// A stand-in for node-1's ztunnel: a pod there with the ztunnel service account, whose
	// bound token tells istiod-lite (through TokenReview) which node the caller runs on.
	apply(t, "istio-system", []byte(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1}
spec:
  nodeName: node-1
  serviceAccountName: ztunnel
  containers: [{name: c, image: ambient/client}]
`))
	ns := newNamespace(t, cs, "shop")
	apply(t, ns, []byte(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: db}
---
apiVersion: v1
kind: Pod
# annotated as the node agent would once redirection is in place; HBONE follows enrolment
metadata: {name: web, labels: {app: web}, annotations: {ambient.istio.io/redirection: enabled}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: c, image: ambient/client}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, labels: {app: db}, annotations: {ambient.istio.io/redirection: enabled}}
spec:
  nodeName: node-2
  serviceAccountName: db
  containers: [{name: c, image: ambient/client}]
`))

	var istiodIP string
	eventually(t, 90*time.Second, "istiod-lite ready and test pods running", func() bool {
		pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod-lite"})
		if err != nil {
			return false
		}
		for _, p := range pods.Items {
			if podReady(&p) {
				istiodIP = p.Status.PodIP
			}
		}
		return istiodIP != "" && running(ctx, cs, "istio-system", "ztunnel-node-1") && running(ctx, cs, ns, "web") && running(ctx, cs, ns, "db")
	})
	var root []byte
	eventually(t, 30*time.Second, "CA root in its Secret", func() bool {
		s, err := cs.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{})
		if err == nil {
			root = s.Data["ca-cert.pem"]
		}
		return len(root) > 0
	})
	zt, err := cs.CoreV1().Pods("istio-system").Get(ctx, "ztunnel-node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts("istio-system").CreateToken(ctx, "ztunnel", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &exp, BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: zt.Name, UID: zt.UID}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(token string) *grpc.ClientConn {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(root)
		cc, err := grpc.NewClient(net.JoinHostPort(istiodIP, "15012"),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return lab.DialInNetns(ctx, lab.NodeAt(1).Netns, addr)
			}),
			grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod-lite.istio-system.svc"})),
			grpc.WithPerRPCCredentials(bearer(token)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	cc := dial(tr.Status.Token)

	// CA: an identity with a pod on the caller's node is issued; one without is refused; a bad
	// token is refused.
	ca := cav1.NewCertificateServiceClient(cc)
	resp, err := ca.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/"+ns+"/sa/web")})
	if err != nil {
		t.Fatalf("certificate for web (pod on node-1): %v", err)
	}
	if len(resp.CertChain) == 0 {
		t.Fatal("empty certificate chain")
	}
	if _, err := ca.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/"+ns+"/sa/db")}); err == nil {
		t.Error("certificate for db (no pod on node-1) was issued")
	}
	if _, err := cav1.NewCertificateServiceClient(dial("not-a-token")).CreateCertificate(ctx,
		&cav1.CreateCertificateRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/"+ns+"/sa/web")}); err == nil {
		t.Error("certificate issued for a bad token")
	}

	// xDS: node-1's ztunnel gets both workloads, then labelling the namespace delivers the change.
	web, _ := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
	db, _ := cs.CoreV1().Pods(ns).Get(ctx, "db", metav1.GetOptions{})
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel-node-1"}, TypeUrl: typeWorkload}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := resourceNames(r)
	for _, uid := range []string{string(web.UID), string(db.UID)} {
		if !strings.Contains(","+got+",", ","+uid+",") {
			t.Errorf("initial workloads %q lack %s", got, uid)
		}
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nsObj.Labels == nil {
		nsObj.Labels = map[string]string{}
	}
	nsObj.Labels["istio.io/dataplane-mode"] = "ambient"
	start := time.Now()
	if _, err := cs.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{string(web.UID): true, string(db.UID): true}
	for len(want) > 0 {
		r, err = st.Recv()
		if err != nil {
			t.Fatalf("waiting for the namespace change: %v", err)
		}
		for _, res := range r.Resources {
			delete(want, res.Name)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}
	// Timings are measured, not asserted (the test's context bounds the wait); the log line
	// gives the lab's propagation time for the note.
	t.Logf("namespace label reached node-1's ztunnel in %s", time.Since(start).Round(time.Millisecond))
}

func running(ctx context.Context, cs kubernetes.Interface, ns, name string) bool {
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	return err == nil && p.Status.Phase == corev1.PodRunning
}

func resourceNames(r *discoveryv3.DeltaDiscoveryResponse) string {
	var n []string
	for _, res := range r.Resources {
		n = append(n, res.Name)
	}
	sort.Strings(n)
	return strings.Join(n, ",")
}

func csrFor(t *testing.T, id string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
