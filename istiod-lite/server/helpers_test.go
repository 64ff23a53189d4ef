package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

// testConfig is the default configuration on ephemeral local ports, with short debounces.
func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := Default()
	cfg.GRPCAddr, cfg.AdminAddr, cfg.MetricsAddr, cfg.ReadyAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.PodName = "istiod-lite-0"
	cfg.DebounceQuiet, cfg.DebounceMax = 10*time.Millisecond, 100*time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// reviewTokens answers TokenReviews: each token in nodes is the ztunnel service account on that
// node; any other token is rejected.
func reviewTokens(nodes map[string]string) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if node, ok := nodes[tr.Spec.Token]; ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra:    map[string]authnv1.ExtraValue{"authentication.kubernetes.io/node-name": {node}},
			}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	}
}

// startRun runs istiod-lite until the test ends and returns its addresses once it is ready.
func startRun(t *testing.T, cfg Config, cl clients) Addrs {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, testLogger(), cfg, cl, func(a Addrs) { addrs <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	var a Addrs
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not started")
	}
	testutil.Eventually(t, 10*time.Second, "the readiness endpoint to say ok", func() bool { return httpGet(t, "http://"+a.Ready+"/") == "ok\n" })
	return a
}

// dialGRPC connects to istiod-lite over TLS, trusting the roots of its CA Secret (read through
// kube), authenticated with token.
func dialGRPC(t *testing.T, a Addrs, kube *kubefake.Clientset, token string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc := dialGRPCNoCleanup(t, a, kube, token, opts...)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// dialWithRoots connects to istiod-lite over TLS, trusting roots (PEM), authenticated with token.
func dialWithRoots(t *testing.T, a Addrs, roots, token string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc := dialWithRootsNoCleanup(t, a, roots, token, opts...)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// dialGRPCNoCleanup is dialGRPC for callers that close the connection themselves.
func dialGRPCNoCleanup(t *testing.T, a Addrs, kube *kubefake.Clientset, token string, opts ...grpc.DialOption) *grpc.ClientConn {
	var roots []byte
	for _, name := range []string{ca.UserCASecret, ca.SelfSignedSecret} {
		if s, err := kube.CoreV1().Secrets("istio-system").Get(context.Background(), name, metav1.GetOptions{}); err == nil {
			roots = append(append(roots, s.Data[ca.KeyCACert]...), s.Data[ca.KeyRootCert]...)
		}
	}
	return dialWithRootsNoCleanup(t, a, string(roots), token, opts...)
}

func dialWithRootsNoCleanup(t *testing.T, a Addrs, roots, token string, opts ...grpc.DialOption) *grpc.ClientConn {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(roots)) {
		t.Fatal("no roots to trust")
	}
	cc, err := grpc.NewClient(a.GRPC, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod-lite.istio-system.svc"})),
		grpc.WithPerRPCCredentials(bearer(token))}, opts...)...)
	if err != nil {
		panic(err) // only for bad options
	}
	return cc
}

// dialXDS opens a ztunnel's wildcard workload stream.
func dialXDS(t *testing.T, a Addrs, kube *kubefake.Clientset, token string, opts ...grpc.DialOption) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialGRPC(t, a, kube, token, opts...)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel-" + token}, TypeUrl: xds.TypeWorkload}); err != nil {
		t.Fatal(err)
	}
	return st
}

// testLogger discards logs, unless ISTIOD_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("ISTIOD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}
