package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

func userCASecret(t *testing.T) (*corev1.Secret, string) {
	t.Helper()
	cert, key, err := ca.NewSelfSigned("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: ca.UserCASecret},
		Data: map[string][]byte{ca.KeyCACert: cert, ca.KeyCAKey: key, ca.KeyRootCert: cert}}, string(cert)
}

// TestRootRotation: replacing cacerts rotates the CA without a restart, and nothing connected
// to istiod-lite notices but the new root: an open xDS stream receives the trust bundle with the
// new root and the old (so peers holding certificates of either trust each other), a new
// certificate chains to the new root, the serving certificate still verifies against the old
// root (a proxy's mounted roots lag), and the root ConfigMaps carry both.
func TestRootRotation(t *testing.T) {
	oldSecret, oldRoot := userCASecret(t)
	newSecret, newRoot := userCASecret(t)
	kube := kubefake.NewClientset(oldSecret,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		testPod("web-1", "uid-web-1", "web", "node-a", "10.1.0.5"))
	kube.PrependReactor("create", "tokenreviews", reviewTokens(map[string]string{"ztunnel-a": "node-a"}))
	cfg := testConfig(t)
	cfg.LeaderElection = false
	a := startRun(t, cfg, fakeClients(kube, istiofake.NewSimpleClientset(), gwfake.NewSimpleClientset()))
	ctx := context.Background()

	cc := dialGRPC(t, a, kube, "ztunnel-a") // trusts the old root only
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundle := func() []string {
		t.Helper()
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
		var tb cav1.TrustBundle
		if len(r.Resources) != 1 || r.Resources[0].Resource.UnmarshalTo(&tb) != nil {
			t.Fatalf("trust bundle response %v", r)
		}
		return tb.Roots
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "z"}, TypeUrl: xds.TypeTrustBundle}); err != nil {
		t.Fatal(err)
	}
	if got := bundle(); !slices.Equal(got, []string{oldRoot}) {
		t.Fatalf("trust bundle before the rotation: %d roots, want the old", len(got))
	}
	certRoot := func(what string) string {
		t.Helper()
		resp, err := cav1.NewCertificateServiceClient(cc).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		chain := resp.GetCertChain()
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(chain[len(chain)-1]))
		blk, _ := pem.Decode([]byte(chain[0]))
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("%s: leaf does not chain to the chain's root: %v", what, err)
		}
		return chain[len(chain)-1]
	}
	if certRoot("certificate before the rotation") != oldRoot {
		t.Error("certificate before the rotation does not chain to the old root")
	}
	rootsIn := func(ns, want string) func() bool {
		return func() bool {
			cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, ca.RootConfigMap, metav1.GetOptions{})
			return err == nil && cm.Data[ca.RootConfigMapKey] == want
		}
	}
	testutil.Eventually(t, 10*time.Second, "the old root published", rootsIn("shop", oldRoot))

	if _, err := kube.CoreV1().Secrets("istio-system").Update(ctx, newSecret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The same stream, never broken, gets both roots, the new first.
	if got := bundle(); !slices.Equal(got, []string{newRoot, oldRoot}) {
		t.Fatalf("trust bundle after the rotation: %d roots, want the new then the old", len(got))
	}
	if certRoot("certificate after the rotation, same connection") != newRoot {
		t.Error("certificate after the rotation does not chain to the new root")
	}
	// A proxy that still trusts only the old root connects (the serving certificate is kept).
	oldOnly := dialWithRoots(t, a, oldRoot, "ztunnel-a")
	if _, err := cav1.NewCertificateServiceClient(oldOnly).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")}); err != nil {
		t.Errorf("a proxy trusting only the old root, after the rotation: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "both roots published", rootsIn("shop", newRoot+oldRoot))
}
