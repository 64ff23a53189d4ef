package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

// fromAddr makes a connection's source address ip (any 127/8 address is local on Linux), so
// that the flood and the good callers are different peers.
func fromAddr(ip string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.DialContext(ctx, "tcp", addr)
	})
}

// TestBadTokenFlood floods the xDS and CA port from one address with junk tokens, on more
// connections than an address may hold, while good proxies elsewhere carry on: an open stream
// gets its push, a certificate is issued, and a ztunnel connecting during the flood is reviewed
// and served. The flood costs the API server its address's review budget and no more.
func TestBadTokenFlood(t *testing.T) {
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		testPod("web-1", "uid-web-1", "web", "node-a", "10.1.0.5"))
	good := map[string]string{"ztunnel-a": "node-a", "ztunnel-b": "node-b"}
	kube.PrependReactor("create", "tokenreviews", reviewTokens(good))
	var junkReviews atomic.Int64
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if _, ok := good[a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).Spec.Token]; !ok {
			junkReviews.Add(1)
		}
		return false, nil, nil // on to reviewTokens
	})
	cfg := testConfig(t)
	cfg.LeaderElection = false
	cfg.MaxConnsPerPeer = 4
	cfg.Authn.PeerReviewBurst, cfg.Authn.PeerReviewRate = 5, 0.001
	a := startRun(t, cfg, fakeClients(kube, istiofake.NewSimpleClientset(), gwfake.NewSimpleClientset()))
	ctx := context.Background()

	const goodAddr, floodAddr = "127.0.0.1", "127.0.0.3"
	st := dialXDS(t, a, kube, "ztunnel-a", fromAddr(goodAddr))
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	goodCC := dialGRPC(t, a, kube, "ztunnel-a", fromAddr(goodAddr))

	// The flood: 16 workers, each opening connection after connection with a fresh junk token
	// (half of them) or the same one, asking for configuration and certificates.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var attempts atomic.Int64
	var codesMu sync.Mutex
	seen := map[codes.Code]int{}
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				token := "junk"
				if w%2 == 0 {
					token = fmt.Sprintf("junk-%d-%d", w, i)
				}
				cc := dialGRPCNoCleanup(t, a, kube, token, fromAddr(floodAddr))
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := cav1.NewCertificateServiceClient(cc).CreateCertificate(cctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")})
				if xs, err2 := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(cctx); err2 == nil {
					_ = xs.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl})
					_, _ = xs.Recv()
				}
				cancel()
				cc.Close()
				attempts.Add(1)
				codesMu.Lock()
				seen[status.Code(err)]++
				codesMu.Unlock()
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	testutil.Eventually(t, 20*time.Second, "the flood under way, over its connection limit", func() bool {
		return attempts.Load() >= 200 && strings.Contains(httpGet(t, "http://"+a.Metrics+"/metrics"), "istiod_lite_grpc_connections_refused_total")
	})

	// Good callers carry on: a push, a certificate, a new ztunnel reviewed and served.
	if _, err := kube.CoreV1().Pods("shop").Create(ctx, testPod("web-2", "uid-web-2", "web", "node-a", "10.1.0.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil || names(r) != "uid-web-2" {
		t.Errorf("push during the flood: %v, %v", r, err)
	}
	if _, err := cav1.NewCertificateServiceClient(goodCC).CreateCertificate(ctx, &cav1.CreateCertificateRequest{Csr: csr(t, "spiffe://cluster.local/ns/shop/sa/web")}); err != nil {
		t.Errorf("certificate during the flood: %v", err)
	}
	stB := dialXDS(t, a, kube, "ztunnel-b", fromAddr(goodAddr))
	if r, err := stB.Recv(); err != nil || len(r.Resources) == 0 {
		t.Errorf("a ztunnel connecting during the flood: %v, %v", r, err)
	}

	codesMu.Lock()
	defer codesMu.Unlock()
	if got := junkReviews.Load(); got > int64(cfg.Authn.PeerReviewBurst) {
		t.Errorf("%d TokenReviews of junk tokens from one address in %d attempts, want at most its budget (%d)", got, attempts.Load(), cfg.Authn.PeerReviewBurst)
	}
	if seen[codes.OK] > 0 {
		t.Errorf("junk tokens got %d certificates", seen[codes.OK])
	}
	if seen[codes.Unauthenticated] == 0 || seen[codes.ResourceExhausted] == 0 {
		t.Errorf("flood outcomes %v: want junk refused (Unauthenticated) and, past the budget, ResourceExhausted", seen)
	}
	t.Logf("flood: %d attempts, outcomes %v, %d TokenReviews of junk", attempts.Load(), seen, junkReviews.Load())
}
