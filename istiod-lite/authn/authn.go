// Package authn authenticates proxies that call istiod-lite (xDS and CA) by their Kubernetes
// service-account token, checked with TokenReview. It owns no state beyond the API client; it
// never decides what a caller may do (the xds and ca packages do).
package authn

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
type TokenReviewer struct {
	kube kubernetes.Interface
	// audiences the token must be issued for; empty means the API server's default.
	audiences []string
}

// NewTokenReviewer returns an Authenticator backed by TokenReview.
func NewTokenReviewer(kube kubernetes.Interface, audiences []string) *TokenReviewer {
	return &TokenReviewer{kube: kube, audiences: audiences}
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

// Review checks token with TokenReview and returns the caller it names.
func (r *TokenReviewer) Review(ctx context.Context, token string) (*Caller, error) {
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
