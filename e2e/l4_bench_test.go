//go:build e2e

package e2e

// BenchmarkL4 is `make bench`'s L4 harness. Rules it keeps:
//   - Every scenario runs on the same three pods: a client on node-1, a server on node-2
//     (cross-node) and one on node-1 (same-node). stunnel4 and HAProxy are sidecars of those pods
//     (client side and server side); the mesh is the same pods enrolled; Go TLS is the echo
//     server's own TLS port.
//   - Rounds interleave the scenarios (a, b, c, d, e, a, …) so that a machine that slows down
//     during the run slows all of them; each figure is the median of the rounds, kept raw in the
//     JSON with every round.
//   - A proxy's CPU comes from its own cgroup's cpu.stat: ztunnel is alone in its pod's cgroup,
//     and each sidecar proxy is moved into a child cgroup of its pod for the run (and back before
//     the pods go, so that the lab can remove their cgroups).
//   - It reports, it does not assert: BENCHMARKS.md states each target as met or not.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/bench"
	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/e2e/lab/kubelet"
)

// benchScenarios are the ways the client's traffic reaches the server, in round order.
var benchScenarios = []bench.Scenario{
	{ID: bench.Direct, Name: "direct", Description: "pod to pod, no mesh, plain TCP"},
	{ID: bench.Mesh, Name: "mesh (ztunnel)", Description: "the pods enrolled: eBPF redirect into ztunnel on each node, HBONE (mTLS HTTP/2 CONNECT) between them", Proxy: "ztunnel"},
	{ID: bench.Stunnel, Name: "stunnel4", Description: "stunnel4 sidecars: client-side TLS client on loopback, server-side TLS server; mutual TLS 1.3, a TLS connection per client connection", Proxy: "stunnel4"},
	{ID: bench.HAProxy, Name: "HAProxy", Description: "HAProxy sidecars in TCP mode, mutual TLS 1.3 between them, a TLS connection per client connection", Proxy: "haproxy"},
	{ID: bench.GoTLS, Name: "Go TLS 1.3", Description: "the client speaks mutual TLS 1.3 (Go crypto/tls) to the server's TLS port: no proxy, the ceiling for an encrypting tunnel"},
}

// Ports of the bench pods: sidecars on the client side listen on loopback, one port per server
// placement and kind (echo, source); the server side accepts TLS and forwards to the echo
// server's plain ports.
const (
	stunnelClientPort = 19100 // +1 cross echo, +2 cross source, +3 same echo, +4 same source
	haproxyClientPort = 19200
	stunnelServerPort = 19301 // echo; +1 source
	haproxyServerPort = 19401
	benchTLSDir       = "/etc/bench-tls"
	benchConfDir      = "/etc/bench"
	// benchZtunnelMemory is ztunnel's memory limit during the run.
	benchZtunnelMemory = "1Gi"
)

func BenchmarkL4(b *testing.B) {
	s := bench.Settings{Rate: 1000, Conns: 10, Size: 1024, NewConnRate: 200, LatencySeconds: 3, ShortSeconds: 1, SearchSeconds: 1,
		MaxConns: 32, ConnWorkers: 16, SLAMillis: 10, IdleConns: 10000, IdleRounds: 5, SearchSteps: 3}
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("AMBIENT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds, s.IdleRounds = v, v // a quicker run while working on the harness
	}
	h := newL4Harness(b, s)
	s = h.s
	run := &bench.Run{Date: time.Now().UTC(), Commit: gitDescribe(), Machine: machineInfo(), Settings: s, Rounds: rounds, Scenarios: benchScenarios}
	b.ResetTimer()
	start := time.Now()

	// The highest rate each scenario holds with p99 under the bound, found once before the rounds.
	slaRate := map[string]int{} // by scenario and placement
	for _, sc := range benchScenarios {
		h.mode(sc.ID)
		for _, pl := range []string{bench.CrossNode, bench.SameNode} {
			slaRate[sc.ID+pl] = h.searchRate(sc.ID, pl)
			b.Logf("(%s) %s, %s: highest rate with p99 under %.0f ms: %d rps", sc.ID, sc.Name, pl, s.SLAMillis, slaRate[sc.ID+pl])
		}
	}
	for round := range rounds {
		for _, sc := range benchScenarios {
			h.mode(sc.ID)
			for _, pl := range []string{bench.CrossNode, bench.SameNode} {
				h.measure(run, round, sc.ID, pl, slaRate[sc.ID+pl])
			}
		}
		b.Logf("round %d of %d done after %v", round+1, rounds, time.Since(start).Round(time.Second))
	}
	for round := range s.IdleRounds {
		for _, sc := range benchScenarios {
			if sc.Proxy != "" {
				h.mode(sc.ID)
				h.idle(run, round, sc.ID)
			}
		}
	}
	b.StopTimer()
	run.ElapsedSeconds = time.Since(start).Seconds()
	dir := benchResults()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := run.Save(filepath.Join(dir, "l4.json")); err != nil {
		b.Fatal(err)
	}
	for _, t := range bench.Targets(run) {
		b.Logf("target %s: %s (met: %v)", t.What, t.Measured, t.Met)
	}
	a99 := run.Figure(bench.Direct, bench.CrossNode, bench.Latency(bench.LoadRate, 99)).Median
	m99 := run.Figure(bench.Mesh, bench.CrossNode, bench.Latency(bench.LoadRate, 99)).Median
	b.ReportMetric(m99-a99, "added-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// benchResults is where the run's results go, committed from one run of make bench.
func benchResults() string { return filepath.Join(labCfg.Root, "e2e", "bench", "results") }

// l4Harness holds the bench pods and what it needs to drive them.
type l4Harness struct {
	b        testing.TB
	cs       kubernetes.Interface
	ns       string
	s        bench.Settings
	enrolled bool
	ips      map[string]string // placement -> server pod IP
	tlsArgs  []string          // the client's mutual TLS flags for (e)
	// proxies by scenario and side (cross-node: the client's and the cross-node server's).
	proxies map[string]map[string]*benchProc
}

func newL4Harness(b testing.TB, s bench.Settings) *l4Harness {
	ctx := context.Background()
	cs := client(b)
	installMesh(b, cs)
	// ztunnel's memory limit (128Mi in deploy/) is lifted for the run, so that the memory per idle
	// connection is measured at IdleConns instead of ztunnel being cut off on the way there.
	for _, args := range [][]string{
		{"-n", "istio-system", "patch", "daemonset", "ztunnel", "--type=json", "-p",
			`[{"op":"replace","path":"/spec/template/spec/containers/0/resources/limits/memory","value":"` + benchZtunnelMemory + `"}]`},
		{"-n", "istio-system", "rollout", "status", "daemonset/ztunnel", "--timeout=180s"},
	} {
		if out, err := kubectlCmd(ctx, args...).CombinedOutput(); err != nil {
			b.Fatalf("kubectl %v: %v: %s", args, err, out)
		}
	}
	eventually(b, 90*time.Second, "one ztunnel per node after the rollout", func() bool {
		pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
		return err == nil && len(pods.Items) == labCfg.Nodes && readyOnNodes(cs, "istio-system", "app=ztunnel") == labCfg.Nodes
	})
	h := &l4Harness{b: b, cs: cs, ns: newNamespace(b, cs, "bench"), s: s, ips: map[string]string{},
		proxies: map[string]map[string]*benchProc{}}
	// stunnel4 and HAProxy hold two descriptors per connection, and stunnel4 takes at most
	// 125/256 of its descriptor limit as clients (its max_clients).
	hard := int(nofileHard(b))
	h.s.IdleConnsSidecar = min(h.s.IdleConns, (hard-200)/2, hard*125/256-50)
	h.tlsArgs = []string{"-tls-cert", benchTLSDir + "/client.crt", "-tls-key", benchTLSDir + "/client.key",
		"-tls-ca", benchTLSDir + "/ca.crt", "-tls-name", "bench-server"}

	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bench-tls"}, Data: map[string][]byte{}}
	for _, name := range []string{"server", "client"} {
		cert, key, ca, err := labCfg.IssueCert("bench-"+name, "bench-"+name)
		if err != nil {
			b.Fatal(err)
		}
		secret.Data[name+".crt"], secret.Data[name+".key"], secret.Data["ca.crt"] = cert, key, ca
		secret.Data[name+".pem"] = append(append([]byte{}, cert...), key...) // HAProxy's crt: both in one file
	}
	if _, err := cs.CoreV1().Secrets(h.ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	h.configMap("bench-server", map[string]string{"stunnel.conf": stunnelServerConf(), "haproxy.cfg": haproxyServerConf(h.s.IdleConnsSidecar + 50)})
	clientNode, crossNode := "node-1", "node-2"
	h.s.ClientNode, h.s.ServerNodeCross = clientNode, crossNode
	echoArgs := []string{"-tls-cert", benchTLSDir + "/server.crt", "-tls-key", benchTLSDir + "/server.key", "-tls-ca", benchTLSDir + "/ca.crt"}
	for pl, node := range map[string]string{bench.CrossNode: crossNode, bench.SameNode: clientNode} {
		h.createPod("server-"+pl, node, "bench-server", corev1.Container{Name: "echo", Image: "ambient/echo", Args: echoArgs})
	}
	for _, pl := range []string{bench.CrossNode, bench.SameNode} {
		h.ips[pl] = h.runningPod("server-" + pl).Status.PodIP
	}
	h.configMap("bench-client", map[string]string{"stunnel.conf": stunnelClientConf(h.ips), "haproxy.cfg": haproxyClientConf(h.ips, h.s.IdleConnsSidecar+50)})
	h.createPod("client", clientNode, "bench-client", corev1.Container{Name: "client", Image: "ambient/client"})
	clientPod := h.runningPod("client")

	// Many short connections from one pod: reuse TIME_WAIT ports and widen the ephemeral range,
	// in the bench pods' own network namespaces only.
	for _, name := range []string{"client", "server-" + bench.CrossNode, "server-" + bench.SameNode} {
		p := h.runningPod(name)
		netns := kubelet.NetnsPrefix + string(p.UID)
		if out, err := exec.Command("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
			"net.ipv4.ip_local_port_range=20000 65000").CombinedOutput(); err != nil {
			b.Fatalf("sysctl in %s: %v: %s", name, err, out)
		}
	}
	server := h.runningPod("server-" + bench.CrossNode)
	h.proxies[bench.Mesh] = map[string]*benchProc{
		bench.ClientSide: ztunnelOn(b, cs, clientPod.Spec.NodeName),
		bench.ServerSide: ztunnelOn(b, cs, server.Spec.NodeName),
	}
	for id, comm := range map[string]string{bench.Stunnel: "stunnel4", bench.HAProxy: "haproxy"} {
		h.proxies[id] = map[string]*benchProc{
			bench.ClientSide: sidecarProc(b, clientPod, comm),
			bench.ServerSide: sidecarProc(b, server, comm),
		}
	}
	// Every target answers before anything is measured.
	for _, sc := range benchScenarios {
		h.mode(sc.ID)
		for _, pl := range []string{bench.CrossNode, bench.SameNode} {
			echo, _, tls := h.target(sc.ID, pl)
			eventually(b, 30*time.Second, fmt.Sprintf("(%s) %s %s answers", sc.ID, sc.Name, pl), func() bool {
				_, err := h.tryLoad("-mode", images.ModeRate, "-addr", echo, "-rate", "100", "-conns", "1", "-duration", "50ms", strings.Join(tls, " "))
				return err == nil
			})
		}
	}
	return h
}

func (h *l4Harness) configMap(name string, data map[string]string) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}
	if _, err := h.cs.CoreV1().ConfigMaps(h.ns).Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		h.b.Fatal(err)
	}
}

// createPod makes a bench pod on node: main, plus stunnel4 and HAProxy sidecars reading their
// configuration from configMap; every container sees the certificates and configuration.
func (h *l4Harness) createPod(name, node, configMap string, main corev1.Container) {
	mounts := []corev1.VolumeMount{{Name: "tls", MountPath: benchTLSDir}, {Name: "conf", MountPath: benchConfDir}}
	main.VolumeMounts = mounts
	// The lab has no images: a sidecar names one of ours and its command runs the Debian program
	// from the host. prlimit: thousands of idle connections need more descriptors than a
	// container's default soft limit of 1024 (Go programs raise their own; stunnel4 and HAProxy
	// do not).
	hard := strconv.FormatUint(nofileHard(h.b), 10)
	sidecar := func(cname string, argv ...string) corev1.Container {
		return corev1.Container{Name: cname, Image: "ambient/client", VolumeMounts: mounts,
			Command: append([]string{"prlimit", "--nofile=" + hard + ":" + hard, "--"}, argv...)}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bench-" + name}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{main,
				sidecar("stunnel4", "stunnel4", benchConfDir+"/stunnel.conf"),
				sidecar("haproxy", "haproxy", "-db", "-f", benchConfDir+"/haproxy.cfg")},
			Volumes: []corev1.Volume{
				{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "bench-tls"}}},
				{Name: "conf", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: configMap}}}},
			},
		},
	}
	if _, err := h.cs.CoreV1().Pods(h.ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		h.b.Fatal(err)
	}
}

// runningPod waits for the pod to run every container and returns it.
func (h *l4Harness) runningPod(name string) *corev1.Pod {
	var pod *corev1.Pod
	eventually(h.b, 60*time.Second, "bench pod "+name+" running", func() bool {
		p, err := h.cs.CoreV1().Pods(h.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return false
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Running == nil {
				return false
			}
		}
		pod = p
		return len(p.Status.ContainerStatuses) == len(p.Spec.Containers)
	})
	return pod
}

// mode enrolls the bench namespace for the mesh scenario and takes it out for the others.
func (h *l4Harness) mode(scenario string) {
	want := scenario == bench.Mesh
	if want == h.enrolled {
		return
	}
	value, annotation := "", ""
	if want {
		value, annotation = mesh.DataplaneModeAmbient, mesh.RedirectionEnabled
	}
	labelNamespace(h.b, h.cs, h.ns, value)
	eventually(h.b, 60*time.Second, "bench pods annotated "+annotation, func() bool { return allAnnotated(h.b, h.cs, h.ns, annotation) })
	h.enrolled = want
}

// target is where the client connects in a scenario: the echo and source addresses, and the
// TLS flags when the client speaks TLS itself.
func (h *l4Harness) target(scenario, placement string) (echo, source string, tlsArgs []string) {
	ip := h.ips[placement]
	offset := 0
	if placement == bench.SameNode {
		offset = 2
	}
	local := func(base int) (string, string) {
		return fmt.Sprintf("127.0.0.1:%d", base+1+offset), fmt.Sprintf("127.0.0.1:%d", base+2+offset)
	}
	switch scenario {
	case bench.Stunnel:
		echo, source = local(stunnelClientPort)
	case bench.HAProxy:
		echo, source = local(haproxyClientPort)
	case bench.GoTLS:
		return ip + ":9443", ip + ":9444", h.tlsArgs
	default:
		echo, source = ip+":9090", ip+":9091"
	}
	return echo, source, nil
}

// tryLoad runs `client bench` in the client pod with args (an empty arg is dropped, a joined
// one split) and returns its result.
func (h *l4Harness) tryLoad(args ...string) (images.LoadResult, error) {
	argv := []string{filepath.Join(labCfg.BinDir, "client"), "-timeout", "5s", "bench"}
	for _, a := range args {
		argv = append(argv, strings.Fields(a)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := lab.Exec(ctx, labCfg, h.ns, "client", argv...)
	if err != nil {
		return images.LoadResult{}, fmt.Errorf("%v: %v: %s", argv[3:], err, out)
	}
	var res images.LoadResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return images.LoadResult{}, fmt.Errorf("%v: result %q: %v", argv[3:], out, err)
	}
	return res, nil
}

// load is tryLoad that fails the benchmark on an error or on failed requests.
func (h *l4Harness) load(args ...string) images.LoadResult {
	res, err := h.tryLoad(args...)
	if err == nil && res.Errors > 0 {
		err = fmt.Errorf("%v: %d of %d requests failed: %v, first: %s", args, res.Errors, res.Errors+res.Requests, res.ErrorKinds, res.FirstError)
	}
	if err != nil {
		h.b.Fatal(err)
	}
	return res
}

func secs(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + "s" }

// searchRate finds the highest open-loop rate whose p99 stays under the bound: from the
// closed-loop maximum it halves until a rate holds (a proxy's tails can miss the bound far below
// its maximum), then bisects between that rate and the next one up for SearchSteps steps. 0 when
// even 1/256 of the maximum misses.
func (h *l4Harness) searchRate(scenario, placement string) int {
	echo, _, tls := h.target(scenario, placement)
	conns := strconv.Itoa(h.s.MaxConns)
	max := h.load("-mode", images.ModeMax, "-addr", echo, "-conns", conns, "-duration", secs(h.s.SearchSeconds), strings.Join(tls, " "))
	holds := func(rate int) bool {
		res, err := h.tryLoad("-mode", images.ModeRate, "-addr", echo, "-rate", strconv.Itoa(rate), "-conns", conns,
			"-duration", secs(h.s.SearchSeconds), strings.Join(tls, " "))
		ok := err == nil && res.Errors == 0 && float64(res.Percentile(99)) < h.s.SLAMillis*1e6 && res.Achieved >= 0.95*float64(rate)
		h.b.Logf("(%s) %s at %d rps: p99 %.2f ms, %.0f rps achieved, %d errors %v (holds: %v)", scenario, placement, rate,
			float64(res.Percentile(99))/1e6, res.Achieved, res.Errors, err, ok)
		return ok
	}
	hi := int(max.Achieved)
	lo := hi / 2
	for !holds(lo) {
		if lo < int(max.Achieved)/256 || lo < 2 {
			return 0
		}
		hi, lo = lo, lo/2
	}
	for range h.s.SearchSteps {
		mid := (lo + hi) / 2
		if holds(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// measure runs one round of one scenario at one placement. The proxies' CPU and memory are read
// cross-node, where the client and server sides are distinct processes.
func (h *l4Harness) measure(run *bench.Run, round int, scenario, placement string, slaRate int) {
	echo, source, tls := h.target(scenario, placement)
	tlsArg := strings.Join(tls, " ")
	latency := func(load string, res images.LoadResult) {
		for i, q := range images.Quantiles {
			run.Add(scenario, placement, bench.Latency(load, q), round, float64(res.Latency[i])/1e6)
		}
	}
	procs := h.proxies[scenario]
	if placement != bench.CrossNode {
		procs = nil
	}
	// Where ztunnel's time goes under each load: CPU profiles of both sides in the first round,
	// cross-node, taken while the load runs.
	profiled := func(name string, seconds int, load func() images.LoadResult) images.LoadResult {
		if scenario != bench.Mesh || placement != bench.CrossNode || round != 0 {
			return load()
		}
		var wg sync.WaitGroup
		for side, p := range procs {
			wg.Go(func() { p.profile(h.b, side, "profile?seconds="+strconv.Itoa(seconds), name) })
		}
		defer wg.Wait()
		return load()
	}
	before := map[string]time.Duration{}
	for side, p := range procs {
		before[side] = p.cpu(h.b)
	}
	t0 := time.Now()
	res := profiled(bench.ProfileRate, int(h.s.LatencySeconds)-1, func() images.LoadResult {
		return h.load("-mode", images.ModeRate, "-addr", echo, "-rate", strconv.Itoa(h.s.Rate), "-conns", strconv.Itoa(h.s.Conns),
			"-size", strconv.Itoa(h.s.Size), "-duration", secs(h.s.LatencySeconds), tlsArg)
	})
	elapsed := time.Since(t0)
	latency(bench.LoadRate, res)
	for side, p := range procs {
		used := p.cpu(h.b) - before[side]
		run.Add(scenario, placement, bench.CPUPrefix+side, round, used.Seconds()/elapsed.Seconds()*1000/res.Achieved)
		rss, peak := p.memory(h.b)
		run.Add(scenario, placement, bench.RSSPrefix+side, round, float64(rss)/1e6)
		run.Add(scenario, placement, bench.PeakPrefix+side, round, float64(peak)/1e6)
	}
	short := secs(h.s.ShortSeconds)
	profileSeconds := max(int(h.s.ShortSeconds)-1, 1)
	res = h.load("-mode", images.ModeRate, "-new", "-addr", echo, "-rate", strconv.Itoa(h.s.NewConnRate), "-conns", strconv.Itoa(h.s.ConnWorkers),
		"-size", strconv.Itoa(h.s.Size), "-duration", secs(h.s.LatencySeconds), tlsArg)
	latency(bench.LoadNewConn, res)
	res = profiled(bench.ProfileStream, profileSeconds, func() images.LoadResult {
		return h.load("-mode", images.ModeStream, "-addr", source, "-duration", short, tlsArg)
	})
	run.Add(scenario, placement, bench.StreamGbps, round, res.BytesPerSecond*8/1e9)
	if slaRate > 0 {
		res, err := h.tryLoad("-mode", images.ModeRate, "-addr", echo, "-rate", strconv.Itoa(slaRate), "-conns", strconv.Itoa(h.s.MaxConns),
			"-size", strconv.Itoa(h.s.Size), "-duration", short, tlsArg)
		if err == nil && res.Errors == 0 {
			latency(bench.LoadSLA, res)
			run.Add(scenario, placement, bench.SLARate, round, float64(slaRate))
		} else {
			h.b.Logf("(%s) %s at %d rps: %v, %d errors", scenario, placement, slaRate, err, res.Errors)
		}
	}
	res = profiled(bench.ProfileMax, profileSeconds, func() images.LoadResult {
		return h.load("-mode", images.ModeMax, "-addr", echo, "-conns", strconv.Itoa(h.s.MaxConns), "-size", strconv.Itoa(h.s.Size), "-duration", short, tlsArg)
	})
	run.Add(scenario, placement, bench.MaxRPS, round, res.Achieved)
	res = profiled(bench.ProfileConnRate, profileSeconds, func() images.LoadResult {
		return h.load("-mode", images.ModeConnRate, "-addr", echo, "-conns", strconv.Itoa(h.s.ConnWorkers), "-size", "1", "-duration", short, tlsArg)
	})
	run.Add(scenario, placement, bench.ConnRate, round, res.Achieved)
}

// idle holds IdleConns connections open through a scenario's proxies (cross-node) and records
// how much each proxy's RSS grew per connection. When they cannot all be opened, the count where
// it broke is recorded and the figure is measured at half the count instead.
func (h *l4Harness) idle(run *bench.Run, round int, scenario string) {
	n := h.idleConns(scenario)
	err := h.holdIdle(run, round, scenario, n)
	if err != nil {
		h.b.Logf("(%s) round %d: %v; measuring at %d connections instead", scenario, round+1, err, n/2)
		if m := failedAtRE.FindStringSubmatch(err.Error()); m != nil { // the client's "connection N of M"
			failedAt, _ := strconv.Atoi(m[1])
			run.Add(scenario, bench.CrossNode, bench.IdleFailedAt, round, float64(failedAt))
		}
		n /= 2
		if err := h.holdIdle(run, round, scenario, n); err != nil {
			h.b.Logf("(%s) round %d: %v", scenario, round+1, err)
			return
		}
	}
	run.Add(scenario, bench.CrossNode, bench.IdleHeld, round, float64(n))
}

var failedAtRE = regexp.MustCompile(`connection (\d+) of \d+`)

// holdIdle opens n idle connections through the scenario and records the proxies' memory per
// connection with them open.
func (h *l4Harness) holdIdle(run *bench.Run, round int, scenario string, n int) error {
	echo, _, tls := h.target(scenario, bench.CrossNode)
	procs := h.proxies[scenario]
	// Each reading follows a collection that gives freed memory back to the kernel (ztunnel), so
	// that memory kept from the rounds before does not hide what the connections take.
	before, beforeGo := map[string]int64{}, map[string]goMemory{}
	for side, p := range procs {
		p.freeMemory(h.b)
		before[side], _ = p.memory(h.b)
		beforeGo[side] = p.goMemory(h.b)
	}
	argv := append([]string{filepath.Join(labCfg.BinDir, "client"), "-timeout", "10s", "bench", "-mode", "idle", "-addr", echo,
		"-conns", strconv.Itoa(n)}, tls...)
	hold, err := lab.ExecCommand(context.Background(), labCfg, h.ns, "client", argv...)
	if err != nil {
		h.b.Fatal(err)
	}
	stdout, err := hold.StdoutPipe()
	if err != nil {
		h.b.Fatal(err)
	}
	var stderr strings.Builder
	hold.Stderr = &stderr
	if err := hold.Start(); err != nil {
		h.b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "open ") {
		_ = hold.Process.Kill()
		_ = hold.Wait()
		return fmt.Errorf("%d idle connections: %q, %v: %s", n, line, err, strings.TrimSpace(stderr.String()))
	}
	for side, p := range procs {
		p.freeMemory(h.b)
		rss, _ := p.memory(h.b)
		run.Add(scenario, bench.CrossNode, bench.IdlePrefix+side, round, float64(rss-before[side])/float64(n)/1024)
		if m := p.goMemory(h.b); m.ok && beforeGo[side].ok { // where ztunnel's grew, from the Go runtime
			run.Add(scenario, bench.CrossNode, bench.IdleStackPrefix+side, round, float64(m.stack-beforeGo[side].stack)/float64(n)/1024)
			run.Add(scenario, bench.CrossNode, bench.IdleHeapPrefix+side, round, float64(m.heap-beforeGo[side].heap)/float64(n)/1024)
		}
		if scenario == bench.Mesh && round == 0 {
			p.profile(h.b, side, "heap", bench.ProfileIdleHeap)
			p.profile(h.b, side, "goroutine", bench.ProfileIdleGoroutine)
		}
	}
	_ = hold.Process.Signal(syscall.SIGTERM)
	_ = hold.Wait()
	return nil
}

// nofileHard is the hard limit on open files that the lab's processes inherit.
func nofileHard(t testing.TB) uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	return l.Max
}

// idleConns is how many idle connections a scenario's proxies can hold: IdleConns, or for a
// proxy that holds two descriptors per connection (stunnel4, HAProxy: the accepted one and its
// own to the server) what the hard limit on open files leaves.
func (h *l4Harness) idleConns(scenario string) int {
	if scenario == bench.Mesh {
		return h.s.IdleConns // ztunnel multiplexes: one descriptor per connection on each side
	}
	return min(h.s.IdleConns, h.s.IdleConnsSidecar)
}

// benchProc is a proxy process whose CPU and memory the harness reads.
type benchProc struct {
	cgroup string // its own cgroup: cpu.stat
	pid    int
	pod    *corev1.Pod // for ztunnel: where its admin port is
}

// ztunnelOn is the ztunnel of node: alone in its pod's cgroup.
func ztunnelOn(t testing.TB, cs kubernetes.Interface, node string) *benchProc {
	p := podOn(t, cs, "istio-system", "app=ztunnel", node)
	root, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	z := &benchProc{cgroup: filepath.Join(root, node, string(p.UID)), pod: p}
	procs, err := os.ReadFile(filepath.Join(z.cgroup, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) != 1 {
		t.Fatalf("ztunnel pod %s on %s: want one process in its cgroup: %q, %v", p.Name, node, procs, err)
	}
	z.pid, _ = strconv.Atoi(strings.Fields(string(procs))[0])
	return z
}

// sidecarProc finds the process named comm in pod and moves it into a cgroup of its own under
// the pod's, for the benchmark; a cleanup moves it back and removes that cgroup.
func sidecarProc(t testing.TB, pod *corev1.Pod, comm string) *benchProc {
	root, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	podCg := filepath.Join(root, pod.Spec.NodeName, string(pod.UID))
	procs, err := os.ReadFile(filepath.Join(podCg, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(procs)) {
		name, _ := os.ReadFile("/proc/" + f + "/comm")
		if strings.TrimSpace(string(name)) != comm {
			continue
		}
		p := &benchProc{cgroup: filepath.Join(podCg, "bench-"+comm)}
		p.pid, _ = strconv.Atoi(f)
		if err := os.Mkdir(p.cgroup, 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.cgroup, "cgroup.procs"), []byte(f), 0o644); err != nil {
			t.Fatalf("move %s of %s into its own cgroup: %v", comm, pod.Name, err)
		}
		t.Cleanup(func() {
			_ = os.WriteFile(filepath.Join(podCg, "cgroup.procs"), []byte(f), 0o644)
			if err := os.Remove(p.cgroup); err != nil {
				t.Errorf("remove %s: %v", p.cgroup, err)
			}
		})
		return p
	}
	t.Fatalf("no %s process in pod %s (%s)", comm, pod.Name, procs)
	return nil
}

// cpu is the CPU time the process's cgroup has used.
func (p *benchProc) cpu(t testing.TB) time.Duration { return p.cpuStat(t, "usage_usec") }

// cpuStat is one time of the cgroup's cpu.stat: usage_usec, user_usec or system_usec (which
// holds the kernel's work in the process's context, the network stack's included).
func (p *benchProc) cpuStat(t testing.TB, key string) time.Duration {
	b, err := os.ReadFile(filepath.Join(p.cgroup, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == key {
			us, _ := strconv.ParseInt(f[1], 10, 64)
			return time.Duration(us) * time.Microsecond
		}
	}
	t.Fatalf("no %s in %s/cpu.stat", key, p.cgroup)
	return 0
}

// memory is the process's resident set and its peak, in bytes.
func (p *benchProc) memory(t testing.TB) (rss, peak int64) {
	m := p.status(t, "VmRSS:", "VmHWM:")
	return m["VmRSS:"], m["VmHWM:"]
}

// status returns the named sizes of /proc/<pid>/status ("VmRSS:", "RssFile:" …), in bytes.
func (p *benchProc) status(t testing.TB, keys ...string) map[string]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]int64, len(keys))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		if slices.Contains(keys, f[0]) {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			m[f[0]] = kb << 10
		}
	}
	return m
}

// profile saves a ztunnel pprof endpoint (its localhost admin port) with the run's results
// (bench.ProfilePath; go tool pprof bin/ztunnel <file>).
func (p *benchProc) profile(t testing.TB, side, endpoint, name string) {
	p.saveProfile(t, endpoint, bench.ProfilePath(benchResults(), side, name))
}

// saveProfile saves a pprof endpoint of the pod's admin port (ztunnel's or a waypoint's) at path.
func (p *benchProc) saveProfile(t testing.TB, endpoint, path string) {
	if p.pod == nil {
		return
	}
	out, err := lab.Exec(context.Background(), labCfg, p.pod.Namespace, p.pod.Name, filepath.Join(labCfg.BinDir, "client"),
		"-timeout", "60s", "http", "http://127.0.0.1:15000/debug/pprof/"+endpoint)
	if err != nil {
		t.Errorf("profile %s of %s: %v", endpoint, p.pod.Name, err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		err = os.WriteFile(path, []byte(out), 0o644)
	}
	if err != nil {
		t.Error(err)
	}
}

// freeMemory has ztunnel collect and give what it no longer uses back to the kernel (its admin
// port's /debug/free_memory); stunnel4 and HAProxy have no such control.
func (p *benchProc) freeMemory(t testing.TB) {
	if p.pod == nil {
		return
	}
	out, err := lab.Exec(context.Background(), labCfg, p.pod.Namespace, p.pod.Name, "curl", "-sSf", "-m", "30", "-X", "POST",
		"http://127.0.0.1:15000/debug/free_memory")
	if err != nil {
		t.Errorf("free memory of ztunnel %s: %v: %s", p.pod.Name, err, out)
	}
}

// goMemory is what a Go proxy's runtime reports of its memory in use.
type goMemory struct {
	stack, heap int64 // go_memstats_stack_inuse_bytes, go_memstats_heap_inuse_bytes
	ok          bool
}

// goMemory reads ztunnel's goroutine stacks and heap in use from its metrics; other proxies
// report nothing.
func (p *benchProc) goMemory(t testing.TB) goMemory {
	if p.pod == nil {
		return goMemory{}
	}
	out, err := lab.Exec(context.Background(), labCfg, p.pod.Namespace, p.pod.Name, filepath.Join(labCfg.BinDir, "client"),
		"-timeout", "10s", "http", "http://127.0.0.1:15020/metrics")
	if err != nil {
		t.Errorf("metrics of ztunnel %s: %v", p.pod.Name, err)
		return goMemory{}
	}
	var m goMemory
	var found int
	for line := range strings.Lines(out) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		v, err := strconv.ParseFloat(value, 64)
		if !ok || err != nil {
			continue
		}
		switch name {
		case "go_memstats_stack_inuse_bytes":
			m.stack, found = int64(v), found+1
		case "go_memstats_heap_inuse_bytes":
			m.heap, found = int64(v), found+1
		}
	}
	m.ok = found == 2
	return m
}

// stunnelNoDelay turns Nagle's algorithm off on both of stunnel's sockets, as anyone tuning it
// for request/response latency does (HAProxy and Go do so by default): with it on, a response
// split over two TLS records waits for the peer's delayed ACK, tens of milliseconds.
const stunnelNoDelay = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"

func stunnelServerConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "foreground = yes\npid =\ndebug = 3\n%s", stunnelNoDelay)
	for i, name := range []string{"echo", "source"} {
		fmt.Fprintf(&b, "[%s]\naccept = 0.0.0.0:%d\nconnect = 127.0.0.1:%d\ncert = %s/server.crt\nkey = %s/server.key\nCAfile = %s/ca.crt\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n",
			name, stunnelServerPort+i, 9090+i, benchTLSDir, benchTLSDir, benchTLSDir)
	}
	return b.String()
}

func stunnelClientConf(ips map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "foreground = yes\npid =\ndebug = 3\n%s", stunnelNoDelay)
	for j, pl := range []string{bench.CrossNode, bench.SameNode} {
		for i, name := range []string{"echo", "source"} {
			fmt.Fprintf(&b, "[%s-%s]\nclient = yes\naccept = 127.0.0.1:%d\nconnect = %s:%d\ncert = %s/client.crt\nkey = %s/client.key\nCAfile = %s/ca.crt\nverifyChain = yes\ncheckHost = bench-server\nsslVersionMin = TLSv1.3\n",
				pl, name, stunnelClientPort+1+2*j+i, ips[pl], stunnelServerPort+i, benchTLSDir, benchTLSDir, benchTLSDir)
		}
	}
	return b.String()
}

// haproxyGlobal: HAProxy refuses to start when maxconn needs more descriptors than it may open.
func haproxyGlobal(maxconn int) string {
	return fmt.Sprintf("global\n  maxconn %d\ndefaults\n  mode tcp\n  maxconn %d\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n", maxconn, maxconn)
}

func haproxyServerConf(maxconn int) string {
	var b strings.Builder
	b.WriteString(haproxyGlobal(maxconn))
	for i, name := range []string{"echo", "source"} {
		fmt.Fprintf(&b, "frontend %s\n  bind :%d ssl crt %s/server.pem ca-file %s/ca.crt verify required ssl-min-ver TLSv1.3\n  default_backend %s\nbackend %s\n  server local 127.0.0.1:%d\n",
			name, haproxyServerPort+i, benchTLSDir, benchTLSDir, name, name, 9090+i)
	}
	return b.String()
}

func haproxyClientConf(ips map[string]string, maxconn int) string {
	var b strings.Builder
	b.WriteString(haproxyGlobal(maxconn))
	for j, pl := range []string{bench.CrossNode, bench.SameNode} {
		for i, name := range []string{"echo", "source"} {
			id := pl + "-" + name
			fmt.Fprintf(&b, "frontend %s\n  bind 127.0.0.1:%d\n  default_backend %s\nbackend %s\n  server s %s:%d ssl crt %s/client.pem ca-file %s/ca.crt verify required verifyhost bench-server sni str(bench-server) ssl-min-ver TLSv1.3\n",
				id, haproxyClientPort+1+2*j+i, id, id, ips[pl], haproxyServerPort+i, benchTLSDir, benchTLSDir)
		}
	}
	return b.String()
}

// gitDescribe is the commit the run measured.
func gitDescribe() string {
	out, err := exec.Command("git", "-C", labCfg.Root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// machineInfo describes the machine: CPU model, cores, memory, kernel, Go, and the versions of
// the proxies compared.
func machineInfo() bench.Machine {
	m := bench.Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %f kB", &kb)
		m.MemoryGiB = kb / (1 << 20)
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var s strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			s.WriteByte(byte(c))
		}
		m.Kernel = s.String()
	}
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), strings.ToLower(strings.TrimSuffix(name, "4"))) && strings.ContainsAny(l, "0123456789") {
				return strings.TrimSpace(l)
			}
		}
		return name + " (version unknown)"
	}
	m.Proxies = first("stunnel4", "-version") + "; " + first("haproxy", "-v")
	return m
}
