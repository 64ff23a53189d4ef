// Package authn authenticates proxies that call istiod-lite (xDS and CA) by their Kubernetes
// service-account token, checked with TokenReview. Its only state is what keeps that cheap for
// the API server: short-lived caches of reviews (successful and failed, by token hash), the
// reviews in flight, and a review budget per peer address. It never decides what a caller may
// do (the xds and ca packages do).
package authn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/limit"
)

// ErrUnauthenticated is returned for a missing, malformed or rejected token.
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrTooManyReviews is returned when the caller's address has used up its review budget: its
// token is neither cached nor reviewed. The caller may retry later.
var ErrTooManyReviews = errors.New("too many token reviews from this address")

// Caller is an authenticated proxy: the service account it runs as and, for a token bound to a
// pod (projected service-account token), the pod and its node.
type Caller struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string
}

// Authenticator authenticates the caller of a gRPC request.
type Authenticator interface {
	Authenticate(ctx context.Context) (*Caller, error)
}

// Config configures a TokenReviewer.
type Config struct {
	// Audiences the token must be issued for; empty means the API server's own. Proxies ask for
	// tokens of audience istio-ca (mesh.TokenAudience), so a token meant for the API server,
	// which any pod holds, is not accepted.
	Audiences []string
	// Timeout bounds each TokenReview.
	Timeout time.Duration
	// FailureTTL is how long a rejected token is remembered: presenting it again within that
	// time costs the API server nothing.
	FailureTTL time.Duration
	// PeerReviewBurst reviews (of tokens found in no cache) may be caused by one peer address at
	// once, and PeerReviewRate per second after that; past it the caller gets ErrTooManyReviews.
	// A flood of junk tokens from one address thus costs the API server a bounded rate.
	PeerReviewRate  float64
	PeerReviewBurst int
}

// DefaultConfig returns the defaults: audience istio-ca; 5 s per review; failures remembered
// 10 s; 200 reviews at once per address (100 simulated ztunnels connecting from one address in
// the lab's benchmark), then 20 a second.
func DefaultConfig() Config {
	return Config{Audiences: []string{mesh.TokenAudience}, Timeout: 5 * time.Second, FailureTTL: 10 * time.Second,
		PeerReviewRate: 20, PeerReviewBurst: 200}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout <= 0 || c.FailureTTL <= 0 {
		errs = append(errs, fmt.Errorf("authn: need review timeout (%v) and failure TTL (%v) > 0", c.Timeout, c.FailureTTL))
	}
	if c.PeerReviewRate <= 0 || c.PeerReviewBurst < 1 {
		errs = append(errs, fmt.Errorf("authn: need per-peer review rate (%v) > 0 and burst (%d) >= 1", c.PeerReviewRate, c.PeerReviewBurst))
	}
	return errors.Join(errs...)
}

// TokenReviewer checks bearer tokens with the API server.
//
// Successful reviews are cached for CacheTTL, keyed by the token's SHA-256: a ztunnel presents the
// same token on its xDS stream and on every certificate request for its node's pods, and after a
// restart of istiod-lite every proxy of the cluster reconnects at once. A token revoked (its pod
// deleted) is thus accepted for at most CacheTTL more, as the API server's own webhook token cache
// does. Rejections are cached for Config.FailureTTL only, so a proxy whose token was rejected by
// a passing fault is soon let in. Concurrent reviews of one token are made once.
type TokenReviewer struct {
	kube  kubernetes.Interface
	cfg   Config
	now   func() time.Time
	peers *limit.Keyed
	// failedMax is the bound of failed; a field so that a test can make it small.
	failedMax int

	mu       sync.Mutex
	cache    map[[sha256.Size]byte]cachedReview
	failed   map[[sha256.Size]byte]failedReview
	inFlight map[[sha256.Size]byte]*call
}

type cachedReview struct {
	caller  *Caller
	expires time.Time
}

type failedReview struct {
	err     error
	expires time.Time
}

// call is a review in flight; done is closed once caller and err are set.
type call struct {
	done    chan struct{}
	caller  *Caller
	err     error
	waiters int // other requests waiting for it (under TokenReviewer.mu)
}

const (
	// CacheTTL is how long a successful review is reused.
	CacheTTL = time.Minute
	// cacheMax bounds the cache of successes: one entry per proxy (ztunnel or waypoint replica),
	// with room.
	cacheMax = 65536
	// failedMax bounds the cache of failures; with the per-peer budget, a flood of distinct junk
	// tokens costs at most this much memory.
	failedMax = 16384
	// peersMax bounds the per-address budgets remembered.
	peersMax = 65536
)

// NewTokenReviewer returns an Authenticator backed by TokenReview through kube, which should be
// a client of its own (its rate limiter, not shared with writes). cfg must be valid.
func NewTokenReviewer(kube kubernetes.Interface, cfg Config) *TokenReviewer {
	r := &TokenReviewer{kube: kube, cfg: cfg, now: time.Now, failedMax: failedMax,
		cache: map[[sha256.Size]byte]cachedReview{}, failed: map[[sha256.Size]byte]failedReview{},
		inFlight: map[[sha256.Size]byte]*call{}}
	r.peers = limit.New(rate.Limit(cfg.PeerReviewRate), cfg.PeerReviewBurst, peersMax, func() time.Time { return r.now() })
	return r
}

// Authenticate reads "authorization: Bearer <token>" from the request metadata and reviews it.
func (r *TokenReviewer) Authenticate(ctx context.Context) (*Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var token string
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			token = strings.TrimSpace(t)
		}
	}
	if token == "" {
		return nil, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	return r.Review(ctx, token)
}

// Review checks token with TokenReview (or the caches of recent reviews) and returns the caller
// it names. The Caller returned is shared: callers must not modify it.
func (r *TokenReviewer) Review(ctx context.Context, token string) (*Caller, error) {
	key := sha256.Sum256([]byte(token))
	now := r.now()
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && now.Before(c.expires) {
		r.mu.Unlock()
		return c.caller, nil
	}
	if f, ok := r.failed[key]; ok && now.Before(f.expires) {
		r.mu.Unlock()
		return nil, f.err
	}
	if c, ok := r.inFlight[key]; ok {
		c.waiters++
		r.mu.Unlock()
		select {
		case <-c.done:
			return c.caller, c.err
		case <-ctx.Done():
			return nil, fmt.Errorf("token review: %w", ctx.Err())
		}
	}
	if !r.peers.Allow(peerHost(ctx)) {
		r.mu.Unlock()
		return nil, ErrTooManyReviews
	}
	c := &call{done: make(chan struct{})}
	r.inFlight[key] = c
	r.mu.Unlock()

	c.caller, c.err = r.review(ctx, token)

	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inFlight, key)
	close(c.done)
	switch {
	case c.err == nil:
		store(r.cache, key, cachedReview{caller: c.caller, expires: now.Add(CacheTTL)}, cacheMax, now,
			func(v cachedReview) time.Time { return v.expires })
	case errors.Is(c.err, ErrUnauthenticated):
		// Only the API server's verdict is remembered; its unavailability is not the token's fault.
		store(r.failed, key, failedReview{err: c.err, expires: now.Add(r.cfg.FailureTTL)}, r.failedMax, now,
			func(v failedReview) time.Time { return v.expires })
	}
	return c.caller, c.err
}

// store adds k to m, making room first when m holds max entries: expired entries go, then, if
// every entry is fresh (a flood of distinct tokens), an arbitrary one.
func store[V any](m map[[sha256.Size]byte]V, k [sha256.Size]byte, v V, max int, now time.Time, expires func(V) time.Time) {
	if len(m) >= max {
		for key, old := range m {
			if !now.Before(expires(old)) {
				delete(m, key)
			}
		}
		for key := range m {
			if len(m) < max {
				break
			}
			delete(m, key)
		}
	}
	m[k] = v
}

// peerHost is the address (without port) of the gRPC peer of ctx; "" when unknown.
func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if h, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return h
	}
	return p.Addr.String()
}

func (r *TokenReviewer) review(ctx context.Context, token string) (*Caller, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	tr, err := r.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: r.cfg.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		// Not ErrUnauthenticated: the API server could not answer, which is not the caller's fault.
		return nil, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return nil, fmt.Errorf("%w: %s", ErrUnauthenticated, tr.Status.Error)
	}
	return CallerFromUser(tr.Status.User)
}

// CallerFromUser parses a reviewed service-account user:
// "system:serviceaccount:<namespace>:<name>", with the pod and node in the extra fields of a
// bound token.
func CallerFromUser(u authnv1.UserInfo) (*Caller, error) {
	rest, ok := strings.CutPrefix(u.Username, "system:serviceaccount:")
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a service account", ErrUnauthenticated, u.Username)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return nil, fmt.Errorf("%w: malformed service account user %q", ErrUnauthenticated, u.Username)
	}
	one := func(k string) string {
		if v := u.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	return &Caller{
		Namespace:      ns,
		ServiceAccount: sa,
		PodName:        one("authentication.kubernetes.io/pod-name"),
		PodUID:         one("authentication.kubernetes.io/pod-uid"),
		NodeName:       one("authentication.kubernetes.io/node-name"),
	}, nil
}
