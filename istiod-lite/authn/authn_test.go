package authn

import (
	"context"
	"errors"
	"testing"

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
