package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
)

func newTestService(t *testing.T, cfg Config) (*Service, *Authority) {
	t.Helper()
	kube := fakeKube()
	a, err := LoadOrCreate(context.Background(), kube, "istio-system", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return NewService(slog.New(slog.DiscardHandler), cfg, NewKeeper(slog.New(slog.DiscardHandler), a, time.Hour, nil),
		authn.NewTokenReviewer(kube, reviewConfig()), nil, nil), a
}

func csrWithKey(t *testing.T, key crypto.Signer, id string) string {
	t.Helper()
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func asWaypoint() context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer waypoint"))
}

// TestKeyTypes: only EC P-256/P-384 and RSA >= 2048 keys are signed.
func TestKeyTypes(t *testing.T) {
	svc, _ := newTestService(t, DefaultConfig())
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rsaKey := func(bits int) crypto.Signer {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		code codes.Code
	}{
		{"EC P-256", ec(elliptic.P256()), codes.OK},
		{"EC P-384", ec(elliptic.P384()), codes.OK},
		{"EC P-521", ec(elliptic.P521()), codes.InvalidArgument},
		{"RSA 2048", rsaKey(2048), codes.OK},
		{"RSA 1024", rsaKey(1024), codes.InvalidArgument},
		{"Ed25519", edKey, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.CreateCertificate(asWaypoint(), &cav1.CreateCertificateRequest{Csr: csrWithKey(t, tc.key, "spiffe://cluster.local/ns/shop/sa/waypoint")})
			if status.Code(err) != tc.code {
				t.Errorf("got %v, want %v", err, tc.code)
			}
		})
	}
}

// TestIssueRateLimited: a caller gets IssueBurst certificates at once, then is told to wait;
// another caller is not affected.
func TestIssueRateLimited(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IssueBurst, cfg.IssueRate = 3, 0.001
	svc, _ := newTestService(t, cfg)
	csr := csrFor(t, "spiffe://cluster.local/ns/shop/sa/waypoint")
	for i := range cfg.IssueBurst {
		if _, err := svc.CreateCertificate(asWaypoint(), &cav1.CreateCertificateRequest{Csr: csr}); err != nil {
			t.Fatalf("request %d of the burst: %v", i, err)
		}
	}
	if _, err := svc.CreateCertificate(asWaypoint(), &cav1.CreateCertificateRequest{Csr: csr}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("request past the burst: %v, want ResourceExhausted", err)
	}
	other := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer ztunnel-unbound"))
	if _, err := svc.CreateCertificate(other, &cav1.CreateCertificateRequest{Csr: csr}); status.Code(err) == codes.ResourceExhausted {
		t.Errorf("another caller was limited: %v", err)
	}
}

// TestIdentityParsing: the CSR's identity is parsed by api/identity: strictly.
func TestIdentityParsing(t *testing.T) {
	svc, _ := newTestService(t, DefaultConfig())
	for _, id := range []string{
		"spiffe://cluster.local/ns/shop/sa/waypoint/extra",
		"spiffe://cluster.local/ns/shop/sa/way%70oint",
		"spiffe://cluster.local/ns/./sa/waypoint",
		"spiffe://CLUSTER.local/ns/shop/sa/waypoint",
		"spiffe://cluster.local:443/ns/shop/sa/waypoint",
		"spiffe://cluster.local/ns/shop/sa/waypoint?x=1",
	} {
		if _, err := svc.CreateCertificate(asWaypoint(), &cav1.CreateCertificateRequest{Csr: csrFor(t, id)}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", id, err)
		}
	}
}
