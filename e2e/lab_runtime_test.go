//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/e2e/lab/kubelet"
	"golang.org/x/sys/unix"
)

// TestLabPodsAsARuntimeMakesThem checks what the lab kubelet does as a container runtime would:
// a container over its memory limit is OOM-killed, reported as OOMKilled and restarted, while one
// within its limit runs on and sees its limits through resourceFieldRef; a container over its cpu
// limit is throttled; a pod's hostname is its
// name, or spec.hostname when set; a container run as a non-root user cannot bind port 80,
// which root can, unless its capabilities drop NET_BIND_SERVICE; and a container's capabilities
// are the runtime's defaults with securityContext's add and drop, for exec'd commands too.
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
    env:
    - name: MEMORY_MIB
      valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
    - name: CPU_MILLIS
      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
    volumeMounts: [{name: limits, mountPath: /etc/limits}]
  volumes:
  - name: limits
    downwardAPI:
      items:
      - {path: memory, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: spinner}
spec:
  containers:
  - name: c
    image: ambient/client
    args: ["spin"]
    resources: {limits: {cpu: 50m}}
---
apiVersion: v1
kind: Pod
metadata: {name: named}
spec:
  hostname: custom
  containers:
  - name: c
    image: ambient/client
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: c
    image: ambient/echo
    args: ["-http=:80", "-tcp=:19090"]
---
apiVersion: v1
kind: Pod
metadata: {name: nobind}
spec:
  containers:
  - name: c
    image: ambient/echo
    args: ["-http=:80", "-tcp=:19090"]
    securityContext: {capabilities: {drop: [NET_BIND_SERVICE]}}
---
apiVersion: v1
kind: Pod
metadata: {name: caps}
spec:
  containers:
  - name: c
    image: ambient/client
    command: ["sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status; exec sleep infinity"]
    securityContext: {capabilities: {add: [NET_ADMIN], drop: [NET_RAW]}}
---
apiVersion: v1
kind: Pod
metadata: {name: root}
spec:
  containers:
  - name: c
    image: ambient/echo
    args: ["-http=:80", "-tcp=:19090"]
    readinessProbe:
      httpGet: {path: /, port: 80}
      periodSeconds: 1
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
	eventually(t, 60*time.Second, "root's echo ready on port 80", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "root", metav1.GetOptions{})
		return err == nil && podReady(p)
	})
	var nonroot *corev1.Pod
	eventually(t, 60*time.Second, "nonroot's echo failed", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "nonroot", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		s := p.Status.ContainerStatuses[0]
		nonroot = p
		return s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode == 1
	})
	// The failed run is the previous one (the current one may not have written anything yet).
	if l := podLog(t, nonroot, &corev1.PodLogOptions{Container: "c", Previous: true}); !strings.Contains(l, "permission denied") {
		t.Errorf("nonroot's echo did not fail for want of permission to bind port 80; its log:\n%s", l)
	}
	// Root without CAP_NET_BIND_SERVICE cannot either.
	var nobind *corev1.Pod
	eventually(t, 60*time.Second, "nobind's echo failed", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "nobind", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		nobind = p
		s := p.Status.ContainerStatuses[0]
		return s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode == 1
	})
	if l := podLog(t, nobind, &corev1.PodLogOptions{Container: "c", Previous: true}); !strings.Contains(l, "permission denied") {
		t.Errorf("root without NET_BIND_SERVICE bound port 80; its log:\n%s", l)
	}
	// The runtime's default set, plus NET_ADMIN, minus NET_RAW: for the container and for a
	// command exec'd into it.
	want := uint64(0)
	for _, c := range []int{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FSETID, unix.CAP_FOWNER, unix.CAP_MKNOD,
		unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETFCAP, unix.CAP_SETPCAP, unix.CAP_NET_BIND_SERVICE,
		unix.CAP_SYS_CHROOT, unix.CAP_KILL, unix.CAP_AUDIT_WRITE, unix.CAP_NET_ADMIN} {
		want |= 1 << c
	}
	wantCaps := fmt.Sprintf("CapEff:\t%016x\nCapBnd:\t%016x\n", want, want)
	eventually(t, 30*time.Second, "caps running", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "caps", metav1.GetOptions{})
		return err == nil && podReady(p)
	})
	capsPod, err := cs.CoreV1().Pods(ns).Get(ctx, "caps", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "caps reported its capabilities", func() bool { return containerLog(t, capsPod, "c") != "" })
	if got := containerLog(t, capsPod, "c"); got != wantCaps {
		t.Errorf("container capabilities:\n%s\nwant:\n%s", got, wantCaps)
	}
	if got, code := kubectlRun(t, "", "-n", ns, "exec", "caps", "--", "grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"); got != wantCaps || code != 0 {
		t.Errorf("exec'd command's capabilities (exit %d):\n%s\nwant:\n%s", code, got, wantCaps)
	}
	// The spinner wants a core and may have 5% of one: the kernel throttles it.
	spinner, err := cs.CoreV1().Pods(ns).Get(ctx, "spinner", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	labCg, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	cpuDir, err := kubelet.CgroupV1("cpu", filepath.Join(labCg, spinner.Spec.NodeName, string(spinner.UID), "c"))
	if err != nil || cpuDir == "" {
		t.Fatalf("no cgroup v1 cpu hierarchy on this host (%v): the lab's cpu limits need it", err)
	}
	if b, err := os.ReadFile(filepath.Join(cpuDir, "cpu.cfs_quota_us")); err != nil || strings.TrimSpace(string(b)) != "5000" {
		t.Errorf("spinner's cpu.cfs_quota_us = %q, %v; want 5000 (50m of a 100 ms period)", b, err)
	}
	eventually(t, 30*time.Second, "the spinner throttled", func() bool {
		b, err := os.ReadFile(filepath.Join(cpuDir, "cpu.stat"))
		if err != nil {
			return false
		}
		for line := range strings.Lines(string(b)) {
			if n, ok := strings.CutPrefix(strings.TrimSpace(line), "nr_throttled "); ok {
				return n != "0"
			}
		}
		return false
	})
	// resourceFieldRef, in env and in a downwardAPI volume: the memory limit in MiB; no cpu
	// limit, so the node's 8 cores.
	fits, err := cs.CoreV1().Pods(ns).Get(ctx, "fits", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadFile(filepath.Join(labCg, fits.Spec.NodeName, string(fits.UID), "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) == 0 {
		t.Fatalf("fits's processes: %q, %v", procs, err)
	}
	environ, err := os.ReadFile("/proc/" + strings.Fields(string(procs))[0] + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(string(environ), "\x00")
	for _, want := range []string{"MEMORY_MIB=64", "CPU_MILLIS=8000"} {
		if !slices.Contains(env, want) {
			t.Errorf("fits's environment lacks %s: %q", want, env)
		}
	}
	if got := execIn(t, ns, "fits", "cat", "/etc/limits/memory"); got != "64" {
		t.Errorf("downwardAPI volume's limits.memory = %q, want 64", got)
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

// TestLabTokensRefreshed checks that a projected service-account token is replaced in the
// running pod before it ages out (here at the lab's shortened refresh age), with a token the API
// server accepts, bound to the pod.
func TestLabTokensRefreshed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "tokens")
	apply(t, ns, []byte(`
apiVersion: v1
kind: Pod
metadata: {name: holder}
spec:
  containers:
  - name: c
    image: ambient/client
    volumeMounts: [{name: tok, mountPath: /var/run/secrets/lab}]
  volumes:
  - name: tok
    projected:
      sources:
      - serviceAccountToken: {path: token, audience: lab-test, expirationSeconds: 600}
`))
	eventually(t, 60*time.Second, "holder running", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "holder", metav1.GetOptions{})
		return err == nil && podReady(p)
	})
	read := func() string { return execIn(t, ns, "holder", "cat", "/var/run/secrets/lab/token") }
	first := read()
	var next string
	eventually(t, 3*tokenMaxAge, "the token replaced", func() bool {
		next = read()
		return next != first
	})
	tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: next, Audiences: []string{"lab-test"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:"+ns+":default" ||
		!slices.Contains(tr.Status.User.Extra["authentication.kubernetes.io/pod-name"], "holder") {
		t.Errorf("refreshed token: %+v, want the pod's default service account, bound to holder", tr.Status)
	}
}
