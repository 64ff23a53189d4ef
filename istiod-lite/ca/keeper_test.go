package ca

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// userCA returns a cacerts Secret holding a new self-signed root.
func userCA(t *testing.T) *corev1.Secret {
	t.Helper()
	cert, key, err := NewSelfSigned("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: UserCASecret},
		Data: map[string][]byte{KeyCACert: cert, KeyCAKey: key, KeyRootCert: cert}}
}

func mustAuthority(t *testing.T, s *corev1.Secret) *Authority {
	t.Helper()
	a, err := fromUserSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestKeeperRotation: a new cacerts signs at once; the old root is served with the new one
// until the retention ends, then dropped; each change is signalled.
func TestKeeperRotation(t *testing.T) {
	oldSecret, newSecret := userCA(t), userCA(t)
	kube := fakeKube(oldSecret)
	clk := clocktesting.NewFakeClock(time.Now())
	const retain = time.Hour
	logs := &testutil.LogBuffer{}
	k := NewKeeper(slog.New(slog.NewTextHandler(logs, nil)), mustAuthority(t, oldSecret), retain, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx, kube, "istio-system") }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	oldRoot, newRoot := string(oldSecret.Data[KeyRootCert]), string(newSecret.Data[KeyRootCert])

	if _, err := kube.CoreV1().Secrets("istio-system").Update(ctx, newSecret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the new CA signing", func() bool { return k.Authority().Roots()[0] == newRoot })
	if got := k.Roots(); !slices.Equal(got, []string{newRoot, oldRoot}) {
		t.Errorf("roots during the rotation: %d, want the new then the old", len(got))
	}
	select {
	case <-k.Changed():
	default:
		t.Error("rotation not signalled")
	}

	// The same Secret again (a resync) changes nothing.
	if k.Rotate(mustAuthority(t, newSecret)) {
		t.Error("the same CA again counted as a rotation")
	}

	testutil.Eventually(t, 5*time.Second, "the expiry timer armed", clk.HasWaiters)
	clk.Step(retain)
	testutil.Eventually(t, 5*time.Second, "the old root retired", func() bool { return slices.Equal(k.Roots(), []string{newRoot}) })
	select {
	case <-k.Changed():
	case <-time.After(5 * time.Second):
		t.Error("retirement not signalled")
	}

	// An unusable Secret leaves the current CA in place.
	bad := newSecret.DeepCopy()
	bad.Data[KeyCAKey] = []byte("garbage")
	if _, err := kube.CoreV1().Secrets("istio-system").Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the bad Secret seen", func() bool { return strings.Contains(logs.String(), "cannot be used") })
	if err := kube.CoreV1().Secrets("istio-system").Delete(ctx, UserCASecret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the deletion seen", func() bool { return strings.Contains(logs.String(), "CA Secret deleted") })
	if got := k.Roots(); !slices.Equal(got, []string{newRoot}) || k.Authority().Roots()[0] != newRoot {
		t.Error("a bad or deleted Secret replaced the CA")
	}
}
