//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestLabPodsAsARuntimeMakesThem checks what the lab kubelet does as a container runtime would:
// a container over its memory limit is OOM-killed, reported as OOMKilled and restarted, while one
// within its limit runs on; and a pod's hostname is its name, or spec.hostname when set.
func TestLabPodsAsARuntimeMakesThem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "runtime")
	apply(t, ns, []byte(`
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: c
    image: ambient/client
    args: ["alloc", "96"]
    resources: {limits: {memory: 48Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: fits}
spec:
  containers:
  - name: c
    image: ambient/client
    args: ["alloc", "16"]
    resources: {limits: {memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: named}
spec:
  hostname: custom
  containers:
  - name: c
    image: ambient/client
`))
	eventually(t, 90*time.Second, "hog OOMKilled and restarted", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "hog", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		s := p.Status.ContainerStatuses[0]
		return s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil &&
			s.LastTerminationState.Terminated.Reason == "OOMKilled" && s.LastTerminationState.Terminated.ExitCode == 137
	})
	for pod, want := range map[string]string{"fits": "fits", "named": "custom"} {
		eventually(t, 30*time.Second, pod+" running", func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
			return err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Running != nil
		})
		if got := strings.TrimSpace(execIn(t, ns, pod, "cat", "/proc/sys/kernel/hostname")); got != want {
			t.Errorf("hostname in %s = %q, want %q", pod, got, want)
		}
	}
	// By now the hog was killed at least once.
	p, err := cs.CoreV1().Pods(ns).Get(ctx, "fits", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Status.ContainerStatuses; len(s) == 0 || s[0].State.Running == nil || s[0].RestartCount != 0 {
		t.Errorf("fits (16 MiB under a 64 MiB limit): %+v, want running, never restarted", s)
	}
}
