package authn

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
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
	r := NewTokenReviewer(kube, nil)
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

func TestReviewCache(t *testing.T) {
	kube := kubefake.NewClientset()
	reviews := 0
	valid := map[string]bool{"good": true}
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews++
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if valid[tr.Spec.Token] {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:ns:sa"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid"}
		}
		return true, tr, nil
	})
	r := NewTokenReviewer(kube, nil)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	review := func(token string, wantReviews int) {
		t.Helper()
		_, err := r.Review(context.Background(), token)
		if valid[token] != (err == nil) {
			t.Fatalf("review %q: %v", token, err)
		}
		if reviews != wantReviews {
			t.Fatalf("after reviewing %q: %d TokenReviews, want %d", token, reviews, wantReviews)
		}
	}
	review("good", 1)
	review("good", 1) // cached
	review("bad", 2)
	review("bad", 3) // failures are not cached
	valid["late"] = false
	review("late", 4)
	valid["late"] = true // a token rejected once is accepted as soon as the API server says so
	review("late", 5)
	now = now.Add(CacheTTL)
	review("good", 6) // expired: reviewed again
	review("good", 6)
}
