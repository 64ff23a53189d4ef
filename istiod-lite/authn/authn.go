// Package authn authenticates proxies that call istiod-lite (xDS and CA) by their Kubernetes
// service-account token, checked with TokenReview. Its only state is a short-lived cache of
// successful reviews; it never decides what a caller may do (the xds and ca packages do).
package authn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrUnauthenticated is returned for a missing, malformed or rejected token.
var ErrUnauthenticated = errors.New("unauthenticated")

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

// TokenReviewer checks bearer tokens with the API server.
//
// Successful reviews are cached for CacheTTL, keyed by the token's SHA-256: a ztunnel presents the
// same token on its xDS stream and on every certificate request for its node's pods, and after a
// restart of istiod-lite every proxy of the cluster reconnects at once. A token revoked (its pod
// deleted) is thus accepted for at most CacheTTL more, as the API server's own webhook token cache
// does. Failures are not cached, so a proxy whose token was just issued is not locked out.
type TokenReviewer struct {
	kube kubernetes.Interface
	// audiences the token must be issued for; empty means the API server's default.
	audiences []string
	now       func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedReview
}

type cachedReview struct {
	caller  *Caller
	expires time.Time
}

const (
	// CacheTTL is how long a successful review is reused.
	CacheTTL = time.Minute
	// cacheMax bounds the cache: one entry per proxy (ztunnel or waypoint replica), with room.
	cacheMax = 65536
)

// NewTokenReviewer returns an Authenticator backed by TokenReview.
func NewTokenReviewer(kube kubernetes.Interface, audiences []string) *TokenReviewer {
	return &TokenReviewer{kube: kube, audiences: audiences, now: time.Now, cache: map[[sha256.Size]byte]cachedReview{}}
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

// Review checks token with TokenReview (or the cache of recent successful reviews) and returns the
// caller it names. The Caller returned is shared: callers must not modify it.
func (r *TokenReviewer) Review(ctx context.Context, token string) (*Caller, error) {
	key := sha256.Sum256([]byte(token))
	now := r.now()
	r.mu.Lock()
	c, ok := r.cache[key]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.caller, nil
	}
	caller, err := r.review(ctx, token)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= cacheMax {
		for k, v := range r.cache {
			if !now.Before(v.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= cacheMax {
			clear(r.cache) // every entry is fresh: a flood of distinct tokens; start over
		}
	}
	r.cache[key] = cachedReview{caller: caller, expires: now.Add(CacheTTL)}
	return caller, nil
}

func (r *TokenReviewer) review(ctx context.Context, token string) (*Caller, error) {
	tr, err := r.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: r.audiences},
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
