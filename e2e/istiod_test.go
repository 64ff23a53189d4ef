//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
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
	ist := deployIstiod(t, cs, 2)
	// A stand-in for node-1's ztunnel: a pod there with the ztunnel service account, whose
	// bound token tells istiod-lite (through TokenReview) which node the caller runs on.
	apply(t, "istio-system", []byte(`
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
	eventually(t, 90*time.Second, "test pods running", func() bool {
		return running(ctx, cs, "istio-system", "ztunnel-node-1") && running(ctx, cs, ns, "web") && running(ctx, cs, ns, "db")
	})
	zt, err := cs.CoreV1().Pods("istio-system").Get(ctx, "ztunnel-node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(token string) *grpc.ClientConn { return ist.dial(t, token) }
	cc := dial(boundToken(t, cs, zt))

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
	// Both pods are running, but istiod-lite may not have pushed their IPs yet: the first
	// responses may come before them.
	var r *discoveryv3.DeltaDiscoveryResponse
	for pending := map[string]bool{string(web.UID): true, string(db.UID): true}; len(pending) > 0; {
		if r, err = st.Recv(); err != nil {
			t.Fatalf("waiting for workloads %v: %v", pending, err)
		}
		for _, res := range r.Resources {
			delete(pending, res.Name)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
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

	// Nodes: a zone label on node-1 becomes the locality of the workloads there.
	kubectl(t, "label", "node", "node-1", "topology.kubernetes.io/zone=lab-a")
	t.Cleanup(func() { kubectl(t, "label", "node", "node-1", "topology.kubernetes.io/zone-") })
	for zone := ""; zone != "lab-a"; {
		r, err = st.Recv()
		if err != nil {
			t.Fatalf("waiting for web's locality: %v", err)
		}
		for _, res := range r.Resources {
			var w workloadv1.Workload
			if err := res.Resource.UnmarshalTo(&w); err != nil {
				t.Fatal(err)
			}
			if res.Name == string(db.UID) && w.GetLocality() != nil {
				t.Errorf("db (on node-2) got locality %v", w.GetLocality())
			}
			if res.Name == string(web.UID) {
				zone = w.GetLocality().GetZone()
			}
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}

	// Routes: the leader writes the status of an HTTPRoute attached to a Service (GAMMA), one
	// backend resolved and one missing.
	apply(t, ns, []byte(`
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}, {name: missing, port: 80}]}]
`))
	// istiod-lite may see the route before the Service (separate watches) and write a status
	// without the parent first; the status settles.
	const wantConds = "istio.io/mesh-controller Accepted=True/Accepted ResolvedRefs=False/BackendNotFound"
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		conds := kubectl(t, "-n", ns, "get", "httproute", "web-route", "-o",
			`jsonpath={range .status.parents[*]}{.controllerName}{range .conditions[*]} {.type}={.status}/{.reason}{end}{end}`)
		if conds == wantConds {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTPRoute status %q after 60s, want %q", conds, wantConds)
		}
	}

	// The root certificate ConfigMap: published into the namespace, and rewritten by the leader
	// when deleted or edited by hand (it watches those ConfigMaps, by name only, as its RBAC allows).
	rootsPublished := func() bool {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		return err == nil && cm.Data["root-cert.pem"] == string(ist.root)
	}
	eventually(t, 60*time.Second, "root ConfigMap published", rootsPublished)
	kubectl(t, "-n", ns, "delete", "configmap", "istio-ca-root-cert")
	start = time.Now()
	eventually(t, 60*time.Second, "deleted root ConfigMap rewritten", rootsPublished)
	t.Logf("deleted root ConfigMap rewritten in %s", time.Since(start).Round(time.Millisecond))
	kubectl(t, "-n", ns, "patch", "configmap", "istio-ca-root-cert", "-p", `{"data":{"root-cert.pem":"edited"}}`)
	eventually(t, 60*time.Second, "edited root ConfigMap rewritten", rootsPublished)
}

// kubectl runs the lab's kubectl and returns its output; a failure fails the test.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := kubectlCmd(context.Background(), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
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

func csrFor(t testing.TB, id string) string {
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

// istiod is istiod-lite deployed in the lab from deploy/ (istio-system).
type istiod struct {
	ip   string // a ready replica's pod IP
	pod  *corev1.Pod
	root []byte // the CA root, from its Secret
}

// deployIstiod installs the CRDs and istiod-lite with the given number of replicas, and waits for
// a ready replica and the CA root. It first waits out an istio-system left terminating by an
// earlier test. The namespace is deleted when the test ends.
func deployIstiod(t testing.TB, cs kubernetes.Interface, replicas int, args ...string) *istiod {
	t.Helper()
	return deployIstiodWithMemory(t, cs, replicas, "", args...)
}

// deployIstiodWithMemory is deployIstiod with the container's memory limit set to memory
// instead of the manifest's ("": as shipped); the lab enforces it, as a cluster sized for a large
// mesh would be configured.
func deployIstiodWithMemory(t testing.TB, cs kubernetes.Interface, replicas int, memory string, args ...string) *istiod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	eventually(t, 2*time.Minute, "an earlier istio-system to be deleted", func() bool {
		n, err := cs.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		return err != nil || n.DeletionTimestamp == nil
	})
	for _, f := range []string{"../deploy/crds/istio-security.yaml", "../deploy/crds/istio-networking.yaml", "../deploy/crds/gateway-api.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Server-side: the experimental HTTPRoute CRD is too large for client-side apply's
		// last-applied annotation.
		cmd := kubectlCmd(ctx, "apply", "--server-side", "--force-conflicts", "-f", "-")
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kubectl apply %s: %v: %s", f, err, out)
		}
	}
	apply(t, "default", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n"))
	b, err := os.ReadFile("../deploy/istiod-lite/istiod-lite.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(string(b), "replicas: 2", fmt.Sprintf("replicas: %d", replicas), 1))
	if memory != "" {
		const shipped = "limits: {memory: 512Mi}"
		if !bytes.Contains(b, []byte(shipped)) {
			t.Fatalf("istiod-lite's manifest has no %q to change", shipped)
		}
		b = bytes.Replace(b, []byte(shipped), []byte("limits: {memory: "+memory+"}"), 1)
	}
	if len(args) > 0 {
		if !bytes.Contains(b, []byte("args: [")) {
			t.Fatal("istiod-lite's manifest has no args list to add to")
		}
		b = bytes.Replace(b, []byte("args: ["), []byte("args: ["+strings.Join(args, ", ")+", "), 1)
	}
	apply(t, "istio-system", b)
	apply(t, "istio-system", []byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ztunnel}\n"))
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), "istio-system", metav1.DeleteOptions{})
	})
	ist := &istiod{}
	eventually(t, 90*time.Second, "istiod-lite ready", func() bool {
		pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod-lite"})
		if err != nil {
			return false
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; podReady(p) {
				ist.ip, ist.pod = p.Status.PodIP, p
			}
		}
		return ist.pod != nil
	})
	eventually(t, 30*time.Second, "CA root in its Secret", func() bool {
		s, err := cs.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{})
		if err == nil {
			ist.root = s.Data["ca-cert.pem"]
		}
		return len(ist.root) > 0
	})
	return ist
}

// dial opens a gRPC connection to istiod-lite from node-1's network, authenticated with token.
// It is closed when the test ends.
func (ist *istiod) dial(t testing.TB, token string) *grpc.ClientConn {
	t.Helper()
	cc, err := ist.conn(token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// conn is dial for callers that close the connection themselves.
func (ist *istiod) conn(token string) (*grpc.ClientConn, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ist.root)
	return grpc.NewClient(net.JoinHostPort(ist.ip, "15012"),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialInNetns(ctx, lab.NodeAt(1).Netns, addr)
		}),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod-lite.istio-system.svc"})),
		grpc.WithPerRPCCredentials(bearer(token)),
		// A ztunnel's first push carries every workload of the cluster in one message.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
}

// process returns the PID of the istiod-lite process of the ready replica: the lab kubelet
// runs each pod in its own cgroup under the lab's, named after the node and the pod UID.
func (ist *istiod) process(t testing.TB) int {
	t.Helper()
	parent, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(parent, ist.pod.Spec.NodeName, string(ist.pod.UID), "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "istiod-lite" {
			return pid
		}
	}
	t.Fatalf("no istiod-lite process in pod %s/%s", ist.pod.Namespace, ist.pod.Name)
	return 0
}

// boundToken returns a service-account token of pod's, bound to pod and of audience istio-ca, as
// the projected token of a proxy is.
func boundToken(t testing.TB, cs kubernetes.Interface, pod *corev1.Pod) string {
	t.Helper()
	return podToken(t, cs, pod, mesh.TokenAudience)
}

// podToken returns a service-account token of pod's bound to pod, for audience (empty: the API
// server's).
func podToken(t testing.TB, cs kubernetes.Interface, pod *corev1.Pod, audience string) string {
	t.Helper()
	tok, err := requestPodToken(cs, pod, audience)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// requestPodToken is podToken for goroutines other than the test's.
func requestPodToken(cs kubernetes.Interface, pod *corev1.Pod, audience string) (string, error) {
	exp := int64(3600)
	var aud []string
	if audience != "" {
		aud = []string{audience}
	}
	tr, err := cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		Audiences: aud, ExpirationSeconds: &exp, BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return tr.Status.Token, nil
}
