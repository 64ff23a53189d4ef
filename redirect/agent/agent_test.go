package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/zds"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// calls is the ordered log of what the agent asked of the kernel and of ztunnel.
type calls struct {
	mu  sync.Mutex
	log []string
}

func (c *calls) add(format string, a ...any) {
	c.mu.Lock()
	c.log = append(c.log, fmt.Sprintf(format, a...))
	c.mu.Unlock()
}

func (c *calls) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.log
	c.log = nil
	return out
}

type fakeDP struct{ c *calls }

func (f fakeDP) Enrol(p redirect.Pod) error {
	f.c.add("enrol %d %v probes %v", p.NetNS, p.IPs, p.ProbePorts)
	return nil
}
func (f fakeDP) Unenrol(n uint64) error                  { f.c.add("unenrol %d", n); return nil }
func (f fakeDP) AttachSKLookup(p string) (uint64, error) { f.c.add("attach"); return 0, nil }
func (f fakeDP) DetachSKLookup(n uint64) error           { f.c.add("detach %d", n); return nil }
func (f fakeDP) EnrolledNetNS() ([]uint64, error)        { return nil, nil }
func (f fakeDP) AllowProxyCgroup(uint64) error           { return nil }
func (f fakeDP) ForgetProxyCgroup(uint64) error          { return nil }

type fakeZDS struct {
	c   *calls
	err error
}

func (f *fakeZDS) Add(_ context.Context, w zds.Workload) error {
	f.c.add("zds add %s/%s %v", w.Info.Namespace, w.Info.Name, w.Info.Ips)
	return f.err
}
func (f *fakeZDS) Del(_ context.Context, uid string) error { f.c.add("zds del"); return f.err }

const testUID = "0f3c2a4e-1b2c-4d5e-8f90-123456789abc"

type harness struct {
	a   *Agent
	c   *calls
	z   *fakeZDS
	cs  *fake.Clientset
	rec *record.FakeRecorder
}

func newHarness(t *testing.T, nsLabels map[string]string, pod *corev1.Pod) *harness {
	t.Helper()
	proc := t.TempDir()
	for pid, cg := range map[string]string{"self": "0::/\n", "42": "0::/kubepods/pod" + testUID + "/c1\n"} {
		if err := os.MkdirAll(filepath.Join(proc, pid, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(proc, pid, "cgroup"), []byte(cg), 0o644)
		os.WriteFile(filepath.Join(proc, pid, "ns", "net"), []byte(pid), 0o644)
	}
	cs := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: nsLabels}}, pod)
	c := &calls{}
	h := &harness{c: c, z: &fakeZDS{c: c}, cs: cs, rec: record.NewFakeRecorder(100)}
	cfg := Default()
	cfg.Node, cfg.ProcDir = "n1", proc
	h.a = &Agent{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), cs: cs, m: newMetrics(prometheus.NewRegistry()),
		procs: newProcIndex(proc, time.Now), pods: map[string]*podState{}, since: map[string]time.Time{},
		// A fake namespace's cookie: a hash of what its fake nsfs file holds, so that it does
		// not depend on the path it is reached by (/proc/<pid>/ns/net or /proc/self/fd/N).
		cookieOf: func(p string) (uint64, error) {
			b, err := os.ReadFile(p)
			h := fnv.New64()
			h.Write(b)
			return h.Sum64() % 1000, err
		},
		dp: fakeDP{c}, zds: h.z, events: h.rec,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); h.a.queue.ShutDown() })
	if err := h.a.startInformers(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

func runningPod(labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: testUID, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstrName("http")}}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.5", PodIPs: []corev1.PodIP{{IP: "10.1.0.5"}}},
	}
}

func (h *harness) annotation(t *testing.T) string {
	t.Helper()
	p, err := h.cs.CoreV1().Pods("shop").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Annotations[mesh.AnnotationRedirection]
}

// reconcile runs one pass, after the informers have seen the latest write.
func (h *harness) reconcile(t *testing.T) {
	t.Helper()
	if err := h.a.reconcile(context.Background(), "shop/web"); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
}

func TestEnrolOrderAndAnnotation(t *testing.T) {
	h := newHarness(t, map[string]string{mesh.LabelDataplaneMode: "ambient"}, runningPod(nil))
	h.reconcile(t)
	cookie, _ := h.a.cookieOf(filepath.Join(h.a.cfg.ProcDir, "42", "ns", "net"))
	want := []string{
		"zds add shop/web [10.1.0.5]", // ztunnel listens before the kernel sends it anything
		fmt.Sprintf("enrol %d [10.1.0.5] probes [8080]", cookie),
		"attach",
	}
	if diff := cmp.Diff(want, h.c.take()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if got := h.annotation(t); got != mesh.RedirectionEnabled {
		t.Errorf("annotation = %q, want enabled", got)
	}

	// Unlabel: the kernel lets go first, then ztunnel; the annotation goes.
	if _, err := h.cs.CoreV1().Namespaces().Patch(context.Background(), "shop", types.MergePatchType,
		[]byte(`{"metadata":{"labels":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the unlabelled namespace in the cache", func() bool { ns, _ := h.a.nsLister.Get("shop"); return ns != nil && len(ns.Labels) == 0 })
	testutil.Eventually(t, 10*time.Second, "the annotated pod in the cache", func() bool {
		p, _ := h.a.podLister.Pods("shop").Get("web")
		return p.Annotations[mesh.AnnotationRedirection] != ""
	})
	h.reconcile(t)
	want = []string{fmt.Sprintf("detach %d", cookie), fmt.Sprintf("unenrol %d", cookie), "zds del"}
	if diff := cmp.Diff(want, h.c.take()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if got := h.annotation(t); got != "" {
		t.Errorf("annotation after unlabel = %q, want none", got)
	}
}

// TestNoZtunnelFailsClosed: with no ztunnel the pod is enrolled in the kernel anyway (its
// traffic refused, never bypassing) and reported pending with an Event; ztunnel's replay ack
// makes it enabled.
func TestNoZtunnelFailsClosed(t *testing.T) {
	h := newHarness(t, map[string]string{mesh.LabelDataplaneMode: "ambient"}, runningPod(nil))
	h.z.err = zds.ErrNoProxy
	h.reconcile(t)
	if got := h.c.take(); len(got) != 3 || !strings.HasPrefix(got[1], "enrol") {
		t.Errorf("calls = %q, want the kernel enrolled", got)
	}
	if got := h.annotation(t); got != mesh.RedirectionPending {
		t.Errorf("annotation = %q, want pending", got)
	}
	select {
	case ev := <-h.rec.Events:
		if !strings.Contains(ev, "ZtunnelNotConnected") {
			t.Errorf("event = %q", ev)
		}
	default:
		t.Error("no Event for the pending pod")
	}
	h.z.err = nil
	h.a.onReplayAck(testUID, nil)
	testutil.Eventually(t, 10*time.Second, "the pending pod in the cache", func() bool {
		p, _ := h.a.podLister.Pods("shop").Get("web")
		return p.Annotations[mesh.AnnotationRedirection] == "pending"
	})
	h.reconcile(t)
	if got := h.c.take(); len(got) != 0 {
		t.Errorf("calls after the ack = %q, want none (the pod is set up)", got)
	}
	if got := h.annotation(t); got != mesh.RedirectionEnabled {
		t.Errorf("annotation after the ack = %q, want enabled", got)
	}
}

func TestNotEnrolled(t *testing.T) {
	for name, tc := range map[string]struct {
		ns  map[string]string
		pod *corev1.Pod
	}{
		"plain namespace": {nil, runningPod(nil)},
		"pod opts out":    {map[string]string{mesh.LabelDataplaneMode: "ambient"}, runningPod(map[string]string{mesh.LabelDataplaneMode: "none"})},
		"hostNetwork": {map[string]string{mesh.LabelDataplaneMode: "ambient"}, func() *corev1.Pod {
			p := runningPod(nil)
			p.Spec.HostNetwork = true
			return p
		}()},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.ns, tc.pod)
			h.reconcile(t)
			if got := h.c.take(); len(got) != 0 {
				t.Errorf("calls = %q, want none", got)
			}
			if got := h.annotation(t); got != "" {
				t.Errorf("annotation = %q", got)
			}
		})
	}
}

func TestAckErrorIsRetried(t *testing.T) {
	h := newHarness(t, map[string]string{mesh.LabelDataplaneMode: "ambient"}, runningPod(nil))
	h.z.err = errors.New("proxy: listen: address in use")
	if err := h.a.reconcile(context.Background(), "shop/web"); err == nil {
		t.Fatal("reconcile with ztunnel refusing the pod succeeded; want an error (and a retry)")
	}
	if got := h.annotation(t); got != mesh.RedirectionPending {
		t.Errorf("annotation = %q, want pending", got)
	}
	h.z.err = nil
	h.c.take()
	h.reconcile(t)
	if got := h.c.take(); len(got) == 0 || !strings.HasPrefix(got[0], "zds add") {
		t.Errorf("retry calls = %q, want the pod handed to ztunnel again", got)
	}
	if got := h.annotation(t); got != mesh.RedirectionEnabled {
		t.Errorf("annotation after the retry = %q, want enabled", got)
	}
}

func intstrName(s string) intstr.IntOrString { return intstr.FromString(s) }
