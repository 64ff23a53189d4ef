package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
)

// tokens maps bearer tokens to the user TokenReview reports.
var tokens = map[string]authnv1.UserInfo{
	"ztunnel-a": {Username: "system:serviceaccount:istio-system:ztunnel", Extra: map[string]authnv1.ExtraValue{
		"authentication.kubernetes.io/node-name": {"node-a"}, "authentication.kubernetes.io/pod-name": {"ztunnel-xyz"}}},
	"ztunnel-unbound": {Username: "system:serviceaccount:istio-system:ztunnel"},
	"waypoint":        {Username: "system:serviceaccount:shop:waypoint"},
}

func fakeKube(objs ...runtime.Object) *kubefake.Clientset {
	kube := kubefake.NewClientset(objs...)
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if u, ok := tokens[tr.Spec.Token]; ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: u}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid token"}
		}
		return true, tr, nil
	})
	return kube
}

func pod(ns, name, sa, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

func csrFor(t *testing.T, uris ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestCreateCertificate(t *testing.T) {
	pods := []*corev1.Pod{pod("shop", "web-1", "web", "node-a"), pod("shop", "db-1", "db", "node-b")}
	kube := fakeKube()
	a, err := LoadOrCreate(context.Background(), kube, "istio-system", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	onNode := func(node string) ([]*corev1.Pod, error) {
		var out []*corev1.Pod
		for _, p := range pods {
			if p.Spec.NodeName == node {
				out = append(out, p)
			}
		}
		return out, nil
	}
	svc := NewService(slog.New(slog.DiscardHandler), DefaultConfig(), NewKeeper(slog.New(slog.DiscardHandler), a, time.Hour, nil), authn.NewTokenReviewer(kube, reviewConfig()), onNode, nil)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(a.Roots()[0]))

	for _, tc := range []struct {
		name, token string
		uris        []string
		validity    int64
		code        codes.Code
		ttl         time.Duration
	}{
		{"ztunnel, pod on its node", "ztunnel-a", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.OK, 24 * time.Hour},
		{"ztunnel, shorter validity", "ztunnel-a", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 3600, codes.OK, time.Hour},
		{"ztunnel, pod on another node", "ztunnel-a", []string{"spiffe://cluster.local/ns/shop/sa/db"}, 0, codes.PermissionDenied, 0},
		{"ztunnel, no such pod", "ztunnel-a", []string{"spiffe://cluster.local/ns/shop/sa/ghost"}, 0, codes.PermissionDenied, 0},
		{"ztunnel, unbound token", "ztunnel-unbound", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.PermissionDenied, 0},
		{"bad token", "forged", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.Unauthenticated, 0},
		{"no token", "", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.Unauthenticated, 0},
		{"waypoint, own identity", "waypoint", []string{"spiffe://cluster.local/ns/shop/sa/waypoint"}, 0, codes.OK, 24 * time.Hour},
		{"waypoint, other identity", "waypoint", []string{"spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.PermissionDenied, 0},
		{"two identities", "waypoint", []string{"spiffe://cluster.local/ns/shop/sa/waypoint", "spiffe://cluster.local/ns/shop/sa/web"}, 0, codes.InvalidArgument, 0},
		{"other trust domain", "waypoint", []string{"spiffe://evil.org/ns/shop/sa/waypoint"}, 0, codes.InvalidArgument, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.token != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+tc.token))
			}
			resp, err := svc.CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csrFor(t, tc.uris...), ValidityDuration: tc.validity})
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if err != nil {
				return
			}
			chain := resp.GetCertChain()
			if len(chain) != 2 || chain[1] != a.Roots()[0] {
				t.Fatalf("chain has %d certs, want leaf and root", len(chain))
			}
			leaf, err := parseCert([]byte(chain[0]))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("leaf does not chain to the root: %v", err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.uris[0] {
				t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, tc.uris[0])
			}
			if got := leaf.NotAfter.Sub(leaf.NotBefore) - time.Minute; got < tc.ttl-time.Minute || got > tc.ttl+time.Minute {
				t.Errorf("validity %v, want about %v", got, tc.ttl)
			}
		})
	}
}

func TestRootSurvivesRestart(t *testing.T) {
	kube := fakeKube()
	ctx := context.Background()
	a1, err := LoadOrCreate(ctx, kube, "istio-system", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := LoadOrCreate(ctx, kube, "istio-system", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if a1.Roots()[0] != a2.Roots()[0] {
		t.Error("second start generated a new root instead of reading the stored one")
	}
}

func TestUserSuppliedCA(t *testing.T) {
	rootPEM, rootKeyPEM, err := NewSelfSigned("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root, err := NewAuthority(rootPEM, rootKeyPEM, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// An intermediate signed by the user's root.
	interPEM, interKeyPEM, err := NewSelfSigned("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ic, _ := parseCert(interPEM)
	ic.RawSubject = nil
	der, err := x509.CreateCertificate(rand.Reader, ic, root.cert, ic.PublicKey, root.key)
	if err != nil {
		t.Fatal(err)
	}
	interCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kube := fakeKube(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: UserCASecret},
		Data: map[string][]byte{KeyCACert: interCert, KeyCAKey: interKeyPEM, KeyRootCert: rootPEM,
			KeyCertChain: append(append([]byte{}, interCert...), rootPEM...)},
	})
	a, err := LoadOrCreate(context.Background(), kube, "istio-system", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if a.Roots()[0] != string(rootPEM) {
		t.Fatal("roots are not the user's")
	}
	csr, _ := x509.ParseCertificateRequest(mustPEM(t, csrFor(t, "spiffe://cluster.local/ns/a/sa/b")))
	chain, err := a.Sign(csr, csr.URIs[0], time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[1] != string(interCert) || chain[2] != string(rootPEM) {
		t.Fatalf("chain = %d certs, want leaf, intermediate, root", len(chain))
	}
}

func TestPublishRoots(t *testing.T) {
	kube := fakeKube()
	ctx := context.Background()
	owner := &metav1.OwnerReference{APIVersion: "v1", Kind: "Namespace", Name: "istio-system", UID: "ns-uid"}
	for _, roots := range []string{"one", "two", "two"} {
		if err := PublishRoots(ctx, kube, "shop", roots, owner); err != nil {
			t.Fatal(err)
		}
		cm, err := kube.CoreV1().ConfigMaps("shop").Get(ctx, RootConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data[RootConfigMapKey] != roots || len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].UID != "ns-uid" {
			t.Errorf("configmap holds %q owned by %v, want %q owned by the installation's namespace", cm.Data[RootConfigMapKey], cm.OwnerReferences, roots)
		}
	}
}

func mustPEM(t *testing.T, s string) []byte {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatal("no PEM")
	}
	return b.Bytes
}

// reviewConfig is authn's default without an audience (the fake clientset ignores it).
func reviewConfig() authn.Config {
	c := authn.DefaultConfig()
	c.Audiences = nil
	return c
}
