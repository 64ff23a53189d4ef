package authn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

func TestAuthenticate(t *testing.T) {
	kube := kubefake.NewClientset()
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		switch tr.Spec.Token {
		case "bound":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra: map[string]authnv1.ExtraValue{
					"authentication.kubernetes.io/pod-name":  {"ztunnel-abc"},
					"authentication.kubernetes.io/pod-uid":   {"uid-1"},
					"authentication.kubernetes.io/node-name": {"node-a"},
				}}}
		case "user":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice"}}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid"}
		}
		return true, tr, nil
	})
	r := NewTokenReviewer(kube, testConfig())
	for _, tc := range []struct {
		name string
		md   metadata.MD
		want *Caller
	}{
		{"bound token", metadata.Pairs("authorization", "Bearer bound"),
			&Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-abc", PodUID: "uid-1", NodeName: "node-a"}},
		{"not a service account", metadata.Pairs("authorization", "Bearer user"), nil},
		{"rejected token", metadata.Pairs("authorization", "Bearer forged"), nil},
		{"no token", metadata.MD{}, nil},
		{"not bearer", metadata.Pairs("authorization", "Basic abc"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Authenticate(metadata.NewIncomingContext(context.Background(), tc.md))
			if tc.want == nil {
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("got %v, %v; want ErrUnauthenticated", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("caller (-want +got):\n%s", diff)
			}
		})
	}
}

func testConfig() Config {
	c := DefaultConfig()
	c.Audiences = nil
	return c
}

// countingKube answers TokenReviews from valid, counting them.
func countingKube(valid map[string]bool) (*kubefake.Clientset, *atomic.Int64) {
	kube := kubefake.NewClientset()
	var reviews atomic.Int64
	var mu sync.Mutex
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		mu.Lock()
		ok := valid[tr.Spec.Token]
		mu.Unlock()
		if ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:ns:sa"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid"}
		}
		return true, tr, nil
	})
	return kube, &reviews
}

func TestReviewCache(t *testing.T) {
	valid := map[string]bool{"good": true}
	kube, reviews := countingKube(valid)
	cfg := testConfig()
	r := NewTokenReviewer(kube, cfg)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	review := func(token string, wantReviews int64) {
		t.Helper()
		_, err := r.Review(context.Background(), token)
		if valid[token] != (err == nil) {
			t.Fatalf("review %q: %v", token, err)
		}
		if !valid[token] && !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("review %q: %v, want ErrUnauthenticated", token, err)
		}
		if got := reviews.Load(); got != wantReviews {
			t.Fatalf("after reviewing %q: %d TokenReviews, want %d", token, got, wantReviews)
		}
	}
	review("good", 1)
	review("good", 1) // cached
	review("bad", 2)
	review("bad", 2) // a failure is cached too: junk presented again costs nothing
	now = now.Add(cfg.FailureTTL)
	review("bad", 3) // ... briefly
	valid["late"] = false
	review("late", 4)
	valid["late"] = true // a token rejected once is accepted once the failure expired
	now = now.Add(cfg.FailureTTL)
	review("late", 5)
	now = now.Add(CacheTTL)
	review("good", 6) // expired: reviewed again
	review("good", 6)
}

// A flood of distinct junk tokens from one address costs the API server its budget, no more;
// another address is not affected; the cache of failures stays bounded.
func TestPeerReviewBudget(t *testing.T) {
	kube, reviews := countingKube(map[string]bool{"good": true})
	cfg := testConfig()
	cfg.PeerReviewBurst, cfg.PeerReviewRate = 5, 1
	r := NewTokenReviewer(kube, cfg)
	r.failedMax = 100
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	from := func(ip string) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
	}
	flooder := from("10.0.0.66")
	limited := 0
	for i := range 3 * r.failedMax {
		_, err := r.Review(flooder, fmt.Sprint("junk-", i))
		if errors.Is(err, ErrTooManyReviews) {
			limited++
		} else if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("junk token %d: %v", i, err)
		}
	}
	if got := reviews.Load(); got != int64(cfg.PeerReviewBurst) {
		t.Errorf("%d TokenReviews for a flood from one address, want the burst (%d)", got, cfg.PeerReviewBurst)
	}
	if limited != 3*r.failedMax-cfg.PeerReviewBurst {
		t.Errorf("%d reviews refused, want %d", limited, 3*r.failedMax-cfg.PeerReviewBurst)
	}
	if _, err := r.Review(from("10.0.0.7"), "good"); err != nil {
		t.Errorf("a good token from another address during the flood: %v", err)
	}
	now = now.Add(time.Second) // the flooder's budget refills at its rate
	if _, err := r.Review(flooder, "junk-again"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("after a refill: %v, want a review", err)
	}
	// Distinct junk from many addresses: the failure cache stays bounded.
	for i := range 3 * r.failedMax {
		_, _ = r.Review(from(fmt.Sprintf("10.1.%d.%d", i/256, i%256)), fmt.Sprint("spread-", i))
	}
	r.mu.Lock()
	n := len(r.failed)
	r.mu.Unlock()
	if n > r.failedMax {
		t.Errorf("%d failures cached, bound %d", n, r.failedMax)
	}
}

// Concurrent requests with one token (a ztunnel's certificate requests for its node's pods at
// start) cause one TokenReview.
func TestConcurrentReviewsOnce(t *testing.T) {
	kube, reviews := countingKube(map[string]bool{"good": true})
	release := make(chan struct{})
	kube.PrependReactor("create", "tokenreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil // on to the counting reactor
	})
	r := NewTokenReviewer(kube, testConfig())
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() { _, err := r.Review(context.Background(), "good"); errs <- err }()
	}
	testutil.Eventually(t, 5*time.Second, "every request waiting on one review", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.inFlight {
			return len(r.inFlight) == 1 && c.waiters == n-1
		}
		return false
	})
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := reviews.Load(); got != 1 {
		t.Errorf("%d TokenReviews for %d concurrent requests with one token", got, n)
	}
}
