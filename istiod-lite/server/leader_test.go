package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// slowAPI is an API server that never answers: every request hangs until its client gives up.
// It counts the requests in flight, the most ever in flight, and those its clients abandoned.
type slowAPI struct {
	srv     *httptest.Server
	release chan struct{}

	mu                             sync.Mutex
	inFlight, maxInFlight, started int
	abandoned                      int
}

func newSlowAPI(t *testing.T) *slowAPI {
	s := &slowAPI{release: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.inFlight++
		s.started++
		s.maxInFlight = max(s.maxInFlight, s.inFlight)
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.inFlight--
			s.mu.Unlock()
		}()
		select {
		case <-r.Context().Done():
			s.mu.Lock()
			s.abandoned++
			s.mu.Unlock()
		case <-s.release:
			http.Error(w, "test over", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(func() { close(s.release); s.srv.Close() })
	return s
}

func (s *slowAPI) stats() (inFlight, maxInFlight, started, abandoned int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight, s.maxInFlight, s.started, s.abandoned
}

// countingTransport counts the API calls under way and the most at once.
type countingTransport struct {
	mu             sync.Mutex
	inFlight, peak int
}

func (c *countingTransport) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.inFlight++
		c.peak = max(c.peak, c.inFlight)
		c.mu.Unlock()
		defer func() { c.mu.Lock(); c.inFlight--; c.mu.Unlock() }()
		return rt.RoundTrip(r)
	})
}

func (c *countingTransport) most() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestLeaderWorkOffPushPath: a first leadership over 1,000 namespaces, against an API server
// that answers no write, does not delay a push; the writes go at most LeaderConcurrency at a
// time, and each is given up after WriteTimeout.
func TestLeaderWorkOffPushPath(t *testing.T) {
	const namespaces = 1000
	objs := []runtime.Object{testPod("web-1", "uid-web-1", "web", "node-a", "10.1.0.5")}
	for i := range namespaces {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%04d", i)}})
	}
	kube := kubefake.NewClientset(objs...)
	kube.PrependReactor("create", "tokenreviews", reviewTokens(map[string]string{"ztunnel-a": "node-a"}))
	gw := gwfake.NewSimpleClientset()
	if err := gw.Tracker().Create(schema.GroupVersion(gwv1.GroupVersion).WithResource("gateways"), &gwv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "waypoint", UID: "uid-gw"},
		Spec: gwv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, "shop"); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(t)
	cfg.LeaderElection = false // leading from the start: the first leadership
	cfg.WriteTimeout = 100 * time.Millisecond
	slow := newSlowAPI(t)
	cl := fakeClients(kube, istiofake.NewSimpleClientset(), gw)
	var err error
	// Built as Run builds them: the per-call timeout is the client's.
	// The calls in flight are counted where the leader makes them: the server learns of an
	// abandoned call only a little after the client has moved on to the next.
	calls := &countingTransport{}
	if cl.write, err = newWriteClients(&rest.Config{Host: slow.srv.URL, QPS: 1000, Burst: 1000, Timeout: cfg.WriteTimeout,
		WrapTransport: calls.wrap}); err != nil {
		t.Fatal(err)
	}
	a := startRun(t, cfg, cl)

	st := dialXDS(t, a, kube, "ztunnel-a")
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-web-1" {
		t.Fatalf("first push %q", got)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	// The leader is at work: more writes started than may be in flight at once, so some
	// were given up on (the API server never answers).
	testutil.Eventually(t, 10*time.Second, "leader writes given up after their timeout", func() bool {
		_, _, started, abandoned := slow.stats()
		return started > cfg.LeaderConcurrency && abandoned > 0
	})

	// A change reaches the ztunnel while the leader's writes are still hanging.
	if _, err := kube.CoreV1().Pods("shop").Create(context.Background(), testPod("web-2", "uid-web-2", "web", "node-a", "10.1.0.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := names(r); got != "uid-web-2" {
		t.Errorf("push after a pod was created: %q", got)
	}
	inFlight, _, started, _ := slow.stats()
	if inFlight == 0 || started >= 2*namespaces {
		t.Errorf("the leader's first pass was over before the push (%d started, %d in flight): the test shows nothing", started, inFlight)
	}
	if maxInFlight := calls.most(); maxInFlight > cfg.LeaderConcurrency {
		t.Errorf("%d leader writes in flight at once, want at most %d", maxInFlight, cfg.LeaderConcurrency)
	}
}
