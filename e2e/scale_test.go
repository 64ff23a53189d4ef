//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/lab"
)

// The istiod-lite scale measurement (issue 4): istiod-lite runs in the lab against the real API
// server, which holds a simulated cluster: pods and services in ambient namespaces, spread over
// simulated nodes (Node objects whose Leases the harness renews; no kubelet runs their pods, whose
// status the harness writes), and one simulated ztunnel per node, each a pod there whose bound
// token authenticates a delta xDS stream to istiod-lite, as the real ztunnel's would.

// Types a ztunnel subscribes to.
var ztunnelTypes = []string{
	"type.googleapis.com/ambient.ca.v1.TrustBundle",
	"type.googleapis.com/ambient.workload.v1.Service",
	typeWorkload,
	"type.googleapis.com/ambient.workload.v1.Authorization",
}

// simCluster is the simulated cluster, grown on demand (ensure) and removed by Cleanup.
type simCluster struct {
	cs kubernetes.Interface // with a high client-side rate limit, to load quickly
	mu sync.Mutex
	// nodes is how many simulated nodes there are (grown by grow, never shrunk).
	nodes int
	// pods holds the UID of every simulated pod by "<ns>/<name>".
	pods map[string]types.UID
	// disabled holds the pods whose redirection annotation a change set to disabled.
	disabled map[string]bool
	stop     context.CancelFunc
}

const (
	simNodePrefix = "sim-"
	simNSPrefix   = "scale-"
	simTaint      = "ambient.lab/simulated"
)

func simNodeName(i int) string { return fmt.Sprintf("%s%03d", simNodePrefix, i) }

// newSimCluster creates the simulated nodes and their ztunnel pods, and keeps the nodes' Leases
// fresh (so that the node lifecycle controller leaves their pods alone) until the test ends,
// when everything simulated is deleted.
func newSimCluster(t testing.TB, nodes int) *simCluster {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", labCfg.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 2000, 2000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	sc := &simCluster{cs: cs, pods: map[string]types.UID{}, disabled: map[string]bool{}, stop: stop}
	t.Cleanup(func() { sc.delete(t) })
	sc.grow(t, nodes)
	go sc.renewLeases(ctx)
	return sc
}

// grow adds simulated nodes, each with its Lease and its ztunnel pod, up to nodes.
func (sc *simCluster) grow(t testing.TB, nodes int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cs := sc.cs
	from := sc.nodeCount()
	if nodes <= from {
		return
	}
	err := parallel(nodes-from, func(j int) error {
		i := from + j
		name := simNodeName(i)
		_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{simTaint: "true"}},
			// Nothing may be scheduled here: only pods the harness binds itself live here.
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: simTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		// The node controllers write to a new Node too (pod CIDR, taints): retry on conflict.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
				Reason: "Simulated", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			return fmt.Errorf("node %s status: %w", name, err)
		}
		dur := int32(40)
		holder := name
		_, err = cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &metav1.MicroTime{Time: time.Now()}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("lease %s: %w", name, err)
		}
		_, err = cs.CoreV1().Pods("istio-system").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + name},
			Spec: corev1.PodSpec{NodeName: name, ServiceAccountName: "ztunnel",
				Containers: []corev1.Container{{Name: "ztunnel", Image: "ambient/client"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("ztunnel pod on %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sc.mu.Lock()
	sc.nodes = nodes
	sc.mu.Unlock()
}

func (sc *simCluster) nodeCount() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.nodes
}

func (sc *simCluster) renewLeases(ctx context.Context) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		_ = parallel(sc.nodeCount(), func(i int) error {
			patch := fmt.Sprintf(`{"spec":{"renewTime":%q}}`, metav1.NowMicro().Format(metav1.RFC3339Micro))
			_, err := sc.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Patch(ctx, simNodeName(i),
				types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			return err
		})
	}
}

// delete removes what the cluster simulated. Pods bound to a simulated node are deleted at once
// (no kubelet would ever confirm a graceful deletion).
func (sc *simCluster) delete(t testing.TB) {
	sc.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	now := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
	nss, _ := sc.cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	for _, ns := range nss.Items {
		if strings.HasPrefix(ns.Name, simNSPrefix) {
			_ = sc.cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, now, metav1.ListOptions{})
			_ = sc.cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		}
	}
	_ = parallel(sc.nodeCount(), func(i int) error {
		_ = sc.cs.CoreV1().Pods("istio-system").Delete(ctx, "ztunnel-"+simNodeName(i), now)
		_ = sc.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, simNodeName(i), metav1.DeleteOptions{})
		return sc.cs.CoreV1().Nodes().Delete(ctx, simNodeName(i), metav1.DeleteOptions{})
	})
	t.Logf("simulated cluster deleted")
}

// ensure grows the simulated cluster to s: nodes, namespaces, services, and running pods with IPs
// (status written as a kubelet would). It is idempotent.
func (sc *simCluster) ensure(t testing.TB, s scale) {
	t.Helper()
	sc.grow(t, s.Nodes)
	nodes := sc.nodeCount()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cs := sc.cs
	start := time.Now()
	err := parallel(s.Namespaces, func(n int) error {
		ns := fmt.Sprintf("%s%03d", simNSPrefix, n)
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		// The controller manager creates "default" too, but maybe not before the first pod.
		_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		for k := range s.ServicesPerNS {
			name := fmt.Sprintf("svc-%02d", k)
			_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = parallel(s.pods(), func(i int) error {
		n, k := i/s.PodsPerNS, i%s.PodsPerNS
		ns, name := fmt.Sprintf("%s%03d", simNSPrefix, n), fmt.Sprintf("pod-%04d", k)
		sc.mu.Lock()
		_, done := sc.pods[ns+"/"+name]
		sc.mu.Unlock()
		if done {
			return nil
		}
		pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name,
				Labels:      map[string]string{"app": fmt.Sprintf("svc-%02d", k%s.ServicesPerNS)},
				Annotations: map[string]string{mesh.AnnotationRedirection: mesh.RedirectionEnabled}},
			Spec: corev1.PodSpec{NodeName: simNodeName(i % nodes), AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "app", Image: "ambient/echo",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			pod, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", ns, name, err)
		}
		if pod.Status.PodIP == "" {
			ip := fmt.Sprintf("10.100.%d.%d", i/250, i%250+1)
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
				HostIP: "10.233.1.1", StartTime: &metav1.Time{Time: time.Now()},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
			if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("pod %s/%s status: %w", ns, name, err)
			}
		}
		sc.mu.Lock()
		sc.pods[ns+"/"+name] = pod.UID
		sc.mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("simulated cluster at %d pods, %d services on %d nodes (grown in %s)",
		s.pods(), s.Namespaces*s.ServicesPerNS, nodes, time.Since(start).Round(time.Second))
}

// uids returns the UIDs of the simulated pods.
func (sc *simCluster) uids() []types.UID {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	out := make([]types.UID, 0, len(sc.pods))
	for _, k := range slices.Sorted(maps.Keys(sc.pods)) {
		out = append(out, sc.pods[k])
	}
	return out
}

// parallel runs f(0..n-1) on 32 workers and returns the first error.
func parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for w := range errs {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// scale is the size of a simulated cluster.
type scale struct {
	Namespaces, PodsPerNS, ServicesPerNS int
	// Nodes is how many simulated nodes, each with its ztunnel, there are at least.
	Nodes int
}

func (s scale) pods() int { return s.Namespaces * s.PodsPerNS }

// ztunnelTokens returns a token bound to each simulated node's ztunnel pod.
func ztunnelTokens(t testing.TB, sc *simCluster) []string {
	t.Helper()
	tokens := make([]string, sc.nodeCount())
	err := parallel(len(tokens), func(i int) error {
		p, err := sc.cs.CoreV1().Pods("istio-system").Get(context.Background(), "ztunnel-"+simNodeName(i), metav1.GetOptions{})
		if err != nil {
			return err
		}
		tokens[i], err = requestPodToken(sc.cs, p, mesh.TokenAudience)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tokens
}

// waitModel waits until istiod-lite serves every simulated pod, seen through one ztunnel.
func waitModel(t testing.TB, ist *istiod, sc *simCluster, token string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	z, err := connectZtunnel(ctx, ist, token, "probe", true)
	if err != nil {
		t.Fatal(err)
	}
	uids := sc.uids()
	eventually(t, 5*time.Minute, fmt.Sprintf("istiod-lite to serve all %d simulated pods", len(uids)), func() bool {
		return z.missing(uids) == 0
	})
	cancel()
	<-z.done
}

// procStats reads a process's resident memory (now and peak, bytes) and CPU time used.
func procStats(t testing.TB, pid int) (rss, peak int64, cpu time.Duration) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "VmRSS:" {
				rss = kb << 10
			} else {
				peak = kb << 10
			}
		}
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start at state, field 3; utime and stime
	// are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	rest := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	ut, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	return rss, peak, time.Duration(ut+stime) * 10 * time.Millisecond
}

// metrics returns istiod-lite's metric samples whose line starts with prefix, keyed by the text
// before the value (name and labels).
func (ist *istiod) metrics(t testing.TB, prefix string) map[string]float64 {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return lab.DialInNetns(ctx, lab.NodeAt(1).Netns, addr)
		}}}
	resp, err := hc.Get("http://" + net.JoinHostPort(ist.ip, "15020") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// resetPeak resets a process's peak resident memory (VmHWM), so that the next reading gives the
// peak of one phase.
func resetPeak(t testing.TB, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestIstiodScaleSmall runs the scale harness on a small cluster, checking what the benchmark
// measures: every simulated ztunnel gets the full state in its first push, and a single pod change
// reaches every ztunnel as a response carrying that one workload and nothing else.
func TestIstiodScaleSmall(t *testing.T) {
	cs := client(t)
	ist := deployIstiod(t, cs, 1)
	s := scale{Namespaces: 4, PodsPerNS: 25, ServicesPerNS: 2, Nodes: 5}
	sc := newSimCluster(t, s.Nodes)
	sc.ensure(t, s)
	tokens := ztunnelTokens(t, sc)
	waitModel(t, ist, sc, tokens[0])
	f, first := connectFleet(t, ist, tokens, true)
	uids := sc.uids()
	simulated := map[string]bool{}
	for _, u := range uids {
		simulated[string(u)] = true
	}
	for i, z := range f.zs {
		if m := z.missing(uids); m != 0 {
			t.Errorf("ztunnel on %s: first push lacks %d of %d simulated pods", simNodeName(i), m, len(uids))
		}
		if n := z.count(ztunnelTypes[1]); n < s.Namespaces*s.ServicesPerNS {
			t.Errorf("ztunnel on %s: first push has %d services, want at least %d", simNodeName(i), n, s.Namespaces*s.ServicesPerNS)
		}
	}
	t.Logf("first push to %d ztunnels: %s", len(f.zs), first.Round(time.Millisecond))
	for c := range 6 {
		// Pods changed twice go back to where they were: still a change for the ztunnels.
		i := c / 2 * 17 % s.pods()
		key := fmt.Sprintf("%s%03d/pod-%04d", simNSPrefix, i/s.PodsPerNS, i%s.PodsPerNS)
		before := f.received()
		lat, _, ds := f.change(t, sc, key)
		sc.mu.Lock()
		changed := string(sc.pods[key])
		sc.mu.Unlock()
		// The response carries the changed workload and no other simulated one (what the rest of
		// the lab changes meanwhile, such as an earlier test's namespace going away, may join it).
		for j, d := range ds {
			for _, n := range slices.Concat(d.resources, d.removed) {
				if simulated[n] && n != changed {
					t.Errorf("change %d: ztunnel on %s got %v and removals %v, want only the changed workload %s of the simulated ones",
						c, simNodeName(j), d.resources, d.removed, changed)
					break
				}
			}
		}
		t.Logf("change %d (%s) reached all %d ztunnels in %s, %d bytes each", c, key, len(f.zs),
			lat.Round(time.Millisecond), (f.received()-before)/int64(len(f.zs)))
	}
}

// BenchmarkIstiodScale measures istiod-lite at 1,000 and at 10,000 pods (100 and 1,000 services)
// with 100 simulated ztunnels, and at 50,000 pods in 500 services with 1,000 ztunnels (the size
// of Istio's published large-cluster test): the time from connecting all of them to all having their first
// full push, the latency from a single pod change (API call) to every ztunnel having it (one
// change per iteration; p50/p99 reported), the bytes each ztunnel receives per change, and
// istiod-lite's resident memory and CPU. Run it with make bench-scale.
func BenchmarkIstiodScale(b *testing.B) {
	cs := client(b)
	// Every simulated ztunnel connects from the lab node the harness dials from: one peer
	// address holding 1,000 connections, each reviewed once.
	// At 50,000 pods istiod-lite peaks near 900 MiB: it gets 1.5 GiB, as an operator would give it
	// for a cluster of that size (the manifest's 512 MiB is sized for up to ~10,000 pods).
	ist := deployIstiodWithMemory(b, cs, 1, "1536Mi", "--max-conns-per-peer=1100", "--peer-review-burst=1100")
	sc := newSimCluster(b, 100)
	pid := ist.process(b)
	sizes := []scale{
		{Namespaces: 10, PodsPerNS: 100, ServicesPerNS: 10, Nodes: 100},
		{Namespaces: 100, PodsPerNS: 100, ServicesPerNS: 10, Nodes: 100},
		{Namespaces: 100, PodsPerNS: 500, ServicesPerNS: 5, Nodes: 1000},
	}
	for _, s := range sizes {
		b.Run(fmt.Sprintf("pods=%d/ztunnels=%d", s.pods(), s.Nodes), func(b *testing.B) {
			resetPeak(b, pid)
			sc.ensure(b, s)
			tokens := ztunnelTokens(b, sc)
			waitModel(b, ist, sc, tokens[0])
			_, loadPeak, cpu0 := procStats(b, pid)
			// Where a change's time goes inside istiod-lite: translating it, and pushing the
			// snapshot to every stream (istiod_lite_xds_push_latency_seconds, from the snapshot
			// to each response written); the rest of the latency is the API server, the watch and
			// the network to the ztunnels.
			stages := []string{"istiod_lite_translation_seconds_", "istiod_lite_xds_push_latency_seconds_"}
			stageSums := func() map[string]float64 {
				out := map[string]float64{}
				for _, prefix := range stages {
					for k, v := range ist.metrics(b, prefix) {
						if strings.Contains(k, "_sum") || strings.Contains(k, "_count") {
							out[k] = v
						}
					}
				}
				return out
			}
			tr0 := stageSums()
			resetPeak(b, pid)
			f, first := connectFleet(b, ist, tokens, false)
			_, pushPeak, cpu1 := procStats(b, pid)
			for i, z := range f.zs {
				if n := z.firstCount(typeWorkload); n < s.pods() {
					b.Fatalf("ztunnel on %s: first push of %d workloads, want at least %d", simNodeName(i), n, s.pods())
				}
			}
			resetPeak(b, pid)
			uids := sc.uids()
			names := slices.Sorted(maps.Keys(sc.pods))
			var lats, writes []time.Duration // API call to last ztunnel; API call to its response
			var bytes int64
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				before := f.received()
				lat, write, _ := f.change(b, sc, names[(i*7919)%len(names)])
				bytes += f.received() - before
				lats = append(lats, lat)
				writes = append(writes, write)
			}
			b.StopTimer()
			rss, peak, cpu2 := procStats(b, pid)
			tr1 := stageSums()
			for _, k := range slices.Sorted(maps.Keys(tr1)) {
				b.Logf("during the changes: %s %.4g", k, tr1[k]-tr0[k])
			}
			b.ReportMetric(float64(percentile(lats, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lats, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(bytes)/float64(len(lats)*len(f.zs)), "bytes/change/ztunnel")
			b.ReportMetric(first.Seconds(), "first-push-s")
			b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
			b.ReportMetric(float64(peak)/(1<<20), "changes-peak-rss-MiB")
			b.ReportMetric(float64(pushPeak)/(1<<20), "first-push-peak-rss-MiB")
			b.ReportMetric(float64(percentile(writes, 0.5).Microseconds())/1000, "api-write-p50-ms")
			b.ReportMetric(float64(percentile(writes, 0.99).Microseconds())/1000, "api-write-p99-ms")
			round := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
			b.Logf("%d pods, %d services, %d ztunnels: first push %s (istiod CPU %s, peak RSS %d MiB); %d changes p50 %s p99 %s (the API call alone: p50 %s p99 %s), %d B/change/ztunnel; istiod CPU %s during changes; RSS %d MiB after them (peak %d MiB); peak RSS while the cluster grew %d MiB",
				len(uids), s.Namespaces*s.ServicesPerNS, len(f.zs), first.Round(time.Millisecond), cpu1-cpu0, pushPeak>>20,
				len(lats), round(percentile(lats, 0.5)), round(percentile(lats, 0.99)), round(percentile(writes, 0.5)), round(percentile(writes, 0.99)),
				bytes/int64(len(lats)*len(f.zs)), cpu2-cpu1, rss>>20, peak>>20, loadPeak>>20)
			f.close()
		})
	}
}
