package kubelet

// Projected service-account tokens, as a kubelet keeps them: each is requested from the API server
// bound to its pod, written atomically (a reader never sees half a token), and requested again
// once 80% of its life has passed, or once it is older than Config.TokenMaxAge (a kubelet's 24
// hours; the e2e lab shortens it so that every run exercises a refresh). A refresh that fails is
// retried after tokenRetry; the old token stays until it expires.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// tokenRetry is the pause after a failed refresh.
const tokenRetry = 10 * time.Second

// DefaultTokenMaxAge is the age at which a kubelet refreshes a token whatever its lifetime.
const DefaultTokenMaxAge = 24 * time.Hour

// projectedToken is one token file of a projected volume.
type projectedToken struct {
	src       *corev1.ServiceAccountTokenProjection
	path      string // the file on the host
	refreshAt time.Time
	failed    string // the last refresh error, logged once
}

// writeToken requests t's token for pod and writes it to its file.
func (v volumes) writeToken(ctx context.Context, pod *corev1.Pod, t *projectedToken, now time.Time) error {
	exp := int64(3600)
	if t.src.ExpirationSeconds != nil {
		exp = *t.src.ExpirationSeconds
	}
	var aud []string
	if t.src.Audience != "" {
		aud = []string{t.src.Audience}
	}
	tr, err := v.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: &exp,
			BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("service-account token for %s/%s: %w", pod.Namespace, pod.Spec.ServiceAccountName, err)
	}
	if err := writeAtomic(t.path, []byte(tr.Status.Token)); err != nil {
		return err
	}
	life := tr.Status.ExpirationTimestamp.Sub(now)
	if life <= 0 {
		life = time.Duration(exp) * time.Second
	}
	maxAge := v.tokenMaxAge
	if maxAge <= 0 {
		maxAge = DefaultTokenMaxAge
	}
	t.refreshAt = now.Add(min(life*8/10, maxAge))
	return nil
}

// refreshTokens requests again the tokens due; the pod worker calls it on every pass.
func (w *podWorker) refreshTokens(ctx context.Context, now time.Time) {
	for _, t := range w.tokens {
		if now.Before(t.refreshAt) {
			continue
		}
		if err := w.k.vols.writeToken(ctx, w.pod, t, now); err != nil {
			if t.failed != err.Error() {
				w.log.Error("refresh service-account token; the old one stays until it expires", "pod", w.pod.Namespace+"/"+w.pod.Name, "file", t.path, "err", err)
			}
			t.failed = err.Error()
			t.refreshAt = now.Add(tokenRetry)
			continue
		}
		t.failed = ""
		w.log.Info("service-account token refreshed", "pod", w.pod.Namespace+"/"+w.pod.Name, "file", t.path, "next", t.refreshAt.Format(time.RFC3339))
	}
}

// writeAtomic replaces the file p with b by a rename in its directory, so that a reader sees the
// old content or the new, never a mix (a volume is bind-mounted as its directory, so the new file
// is what the container sees).
func writeAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+filepath.Base(p)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}
