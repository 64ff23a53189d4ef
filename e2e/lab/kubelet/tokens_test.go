package kubelet

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A token is written whole and due again at 80% of its life, or at the maximum age if sooner.
func TestTokenRefreshSchedule(t *testing.T) {
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	issued := 0
	cs := fake.NewClientset()
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		issued++
		tr.Status = authv1.TokenRequestStatus{Token: "token-" + string(rune('0'+issued)),
			ExpirationTimestamp: metav1.NewTime(now.Add(time.Duration(*tr.Spec.ExpirationSeconds) * time.Second))}
		return true, tr, nil
	})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u"}, Spec: corev1.PodSpec{ServiceAccountName: "sa"}}
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		exp    int64
		maxAge time.Duration
		want   time.Duration
	}{
		{name: "80% of an hour", exp: 3600, want: 48 * time.Minute},
		{name: "maximum age first", exp: 3600, maxAge: 30 * time.Second, want: 30 * time.Second},
		{name: "80% of ten minutes before the default maximum age", exp: 600, want: 8 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := volumes{cs: cs, tokenMaxAge: tc.maxAge}
			tok := &projectedToken{src: &corev1.ServiceAccountTokenProjection{Path: "t", ExpirationSeconds: &tc.exp}, path: filepath.Join(dir, "t")}
			if err := v.writeToken(context.Background(), pod, tok, now); err != nil {
				t.Fatal(err)
			}
			if got := tok.refreshAt.Sub(now); got != tc.want {
				t.Errorf("refresh after %v, want %v", got, tc.want)
			}
			b, err := os.ReadFile(tok.path)
			if err != nil || string(b) != "token-"+string(rune('0'+issued)) {
				t.Errorf("token file %q, %v; want the token just issued", b, err)
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the volume holds %d files, want the token only (no temporary left)", len(ents))
	}
}
