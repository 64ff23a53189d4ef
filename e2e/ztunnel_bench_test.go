//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkZtunnelL4 measures what the mesh costs at L4 against direct traffic between the same
// pods, in one run (make bench-ztunnel): 1 KiB request/response at 1000 requests per second
// over 10 persistent connections (open loop, latency from each request's due time), to an echo
// pod on the other node and on the same node, direct and through the mesh, interleaved over
// rounds; ztunnel's CPU (its cgroup's cpu.stat) and RSS on both nodes during the mesh runs; and
// the memory per open idle connection through the mesh (1,000 of them). Each figure is the
// median of the rounds. It reports, it does not assert: the targets are in the note and in
// BENCHMARKS.md.
func BenchmarkZtunnelL4(b *testing.B) {
	const (
		rounds   = 3
		rate     = 1000
		conns    = 10
		size     = 1024
		duration = 10 * time.Second
		idle     = 1000
	)
	ctx := context.Background()
	cs := client(b)
	installMesh(b, cs)
	ns := newNamespace(b, cs, "bench")
	echo := deployEcho(b, cs, ns)
	clientPod, remote, local := echoByNode(b, cs, ns, echo)
	targets := map[string]string{"cross-node": remote.Status.PodIP + ":9090", "same-node": local.Status.PodIP + ":9090"}
	clientBin := filepath.Join(labCfg.BinDir, "client")
	rr := func(target string) images.RRResult {
		out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "rr", target,
			strconv.Itoa(rate), strconv.Itoa(conns), strconv.Itoa(size), duration.String())
		if err != nil {
			b.Fatalf("rr to %s: %v: %s", target, err, out)
		}
		var res images.RRResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			b.Fatalf("rr result %q: %v", out, err)
		}
		if res.Errors > 0 {
			b.Fatalf("rr to %s: %d errors, first %s", target, res.Errors, res.FirstError)
		}
		return res
	}
	mode := func(value string) {
		labelNamespace(b, cs, ns, value)
		want := mesh.RedirectionEnabled
		if value != mesh.DataplaneModeAmbient {
			want = ""
		}
		eventually(b, 60*time.Second, "pods annotated "+want, func() bool { return allAnnotated(b, cs, ns, want) })
	}
	zts := map[string]*ztunnelProc{} // by role: client side, server side
	for i := 1; i <= labCfg.Nodes; i++ {
		node := fmt.Sprintf("node-%d", i)
		role := "server-side"
		if node == clientPod.Spec.NodeName {
			role = "client-side"
		}
		zts[role] = newZtunnelProc(b, cs, node)
	}

	type sample struct{ p50, p90, p99, p999 []float64 } // ms
	results := map[string]*sample{}
	add := func(key string, r images.RRResult) {
		s := results[key]
		if s == nil {
			s = &sample{}
			results[key] = s
		}
		ms := func(ns int64) float64 { return float64(ns) / 1e6 }
		s.p50, s.p90, s.p99, s.p999 = append(s.p50, ms(r.P50)), append(s.p90, ms(r.P90)), append(s.p99, ms(r.P99)), append(s.p999, ms(r.P999))
	}
	cpu := map[string][]float64{} // cores per 1000 rps, by role
	rss := map[string][]float64{} // MiB after a run, by role
	b.ResetTimer()
	for round := 0; round < rounds; round++ {
		for _, scenario := range []string{"direct", "mesh"} {
			if scenario == "mesh" {
				mode(mesh.DataplaneModeAmbient)
			} else {
				mode("")
			}
			for _, where := range []string{"cross-node", "same-node"} {
				before := map[string]time.Duration{}
				for role, z := range zts {
					before[role] = z.cpu(b)
				}
				// Where ztunnel's time goes, for the first mesh run across nodes: a CPU profile
				// of each side while it runs (go tool pprof bin/ztunnel .bench/...).
				var profiled sync.WaitGroup
				if scenario == "mesh" && where == "cross-node" && round == 0 {
					for role, z := range zts {
						profiled.Go(func() { z.profile(b, role, "profile?seconds=5", "cpu") })
					}
				}
				start := time.Now()
				add(scenario+" "+where, rr(targets[where]))
				elapsed := time.Since(start)
				profiled.Wait()
				if scenario == "mesh" && where == "cross-node" {
					for role, z := range zts {
						used := z.cpu(b) - before[role]
						cpu[role] = append(cpu[role], used.Seconds()/elapsed.Seconds()*1000/rate)
						rss[role] = append(rss[role], float64(z.rss(b))/(1<<20))
					}
				}
			}
		}
	}
	b.StopTimer()

	// Idle connections through the mesh: ztunnel's RSS before and with them open.
	mode(mesh.DataplaneModeAmbient)
	idleBefore := map[string]int64{}
	for role, z := range zts {
		idleBefore[role] = z.rss(b)
	}
	hold, err := lab.ExecCommand(ctx, labCfg, ns, "client", clientBin, "-timeout", "10s", "idle", targets["cross-node"], strconv.Itoa(idle))
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := hold.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := hold.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "open ") {
		_ = hold.Process.Kill()
		b.Fatalf("idle connections: %q, %v", line, err)
	}
	perConn := map[string]float64{}
	for role, z := range zts {
		perConn[role] = float64(z.rss(b)-idleBefore[role]) / idle / 1024
		z.profile(b, role, "heap", "idle-heap")
	}
	_ = hold.Process.Signal(syscall.SIGTERM)
	_ = hold.Wait()

	med := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	spread := func(v []float64) string { return fmt.Sprintf("%.3f–%.3f", slices.Min(v), slices.Max(v)) }
	var rep strings.Builder
	fmt.Fprintf(&rep, "1 KiB request/response, %d rps over %d connections, %s per run, median of %d rounds (spread):\n", rate, conns, duration, rounds)
	for _, where := range []string{"cross-node", "same-node"} {
		d, m := results["direct "+where], results["mesh "+where]
		fmt.Fprintf(&rep, "  %-10s  direct p50 %.3f p90 %.3f p99 %.3f (%s) p99.9 %.3f ms | mesh p50 %.3f p90 %.3f p99 %.3f (%s) p99.9 %.3f ms | added p99 %.3f ms\n",
			where, med(d.p50), med(d.p90), med(d.p99), spread(d.p99), med(d.p999), med(m.p50), med(m.p90), med(m.p99), spread(m.p99), med(m.p999), med(m.p99)-med(d.p99))
		b.ReportMetric(med(m.p99)-med(d.p99), "added-p99-ms-"+where)
	}
	for _, role := range []string{"client-side", "server-side"} {
		fmt.Fprintf(&rep, "  ztunnel %s: %.4f cores per 1000 rps (%s), RSS %.1f MiB (%s), %.1f KiB per idle connection\n",
			role, med(cpu[role]), spread(cpu[role]), med(rss[role]), spread(rss[role]), perConn[role])
		b.ReportMetric(med(cpu[role]), "cores/krps-"+role)
		b.ReportMetric(med(rss[role]), "rss-MiB-"+role)
		b.ReportMetric(perConn[role], "KiB/idle-conn-"+role)
	}
	b.Log("\n" + rep.String())
}

// ztunnelProc reads a node's ztunnel's CPU and memory from its pod's cgroup and process.
type ztunnelProc struct {
	cgroup string
	pid    int
	pod    *corev1.Pod
}

// profile saves ztunnel's pprof endpoint (on its localhost admin port) to
// .bench/ztunnel-<role>.<name>.pprof.
func (z *ztunnelProc) profile(t testing.TB, role, endpoint, name string) {
	out, err := lab.Exec(context.Background(), labCfg, z.pod.Namespace, z.pod.Name, filepath.Join(labCfg.BinDir, "client"),
		"-timeout", "60s", "http", "http://127.0.0.1:15000/debug/pprof/"+endpoint)
	if err != nil {
		t.Errorf("%s profile of the %s ztunnel: %v", name, role, err)
		return
	}
	dir := filepath.Join(labCfg.Root, ".bench")
	file := filepath.Join(dir, "ztunnel-"+role+"."+name+".pprof")
	if err := os.MkdirAll(dir, 0o755); err == nil {
		err = os.WriteFile(file, []byte(out), 0o644)
	}
	if err != nil {
		t.Error(err)
	}
}

func newZtunnelProc(t testing.TB, cs kubernetes.Interface, node string) *ztunnelProc {
	p := podOn(t, cs, "istio-system", "app=ztunnel", node)
	root, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	z := &ztunnelProc{cgroup: filepath.Join(root, node, string(p.UID)), pod: p}
	procs, err := os.ReadFile(filepath.Join(z.cgroup, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) != 1 {
		t.Fatalf("ztunnel pod %s on %s: want one process in its cgroup: %q, %v", p.Name, node, procs, err)
	}
	z.pid, _ = strconv.Atoi(strings.Fields(string(procs))[0])
	if p.Status.Phase != corev1.PodRunning {
		t.Fatalf("ztunnel pod %s on %s not running", p.Name, node)
	}
	return z
}

// cpu is the CPU time the pod's cgroup has used.
func (z *ztunnelProc) cpu(t testing.TB) time.Duration {
	b, err := os.ReadFile(filepath.Join(z.cgroup, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "usage_usec" {
			us, _ := strconv.ParseInt(f[1], 10, 64)
			return time.Duration(us) * time.Microsecond
		}
	}
	t.Fatalf("no usage_usec in %s/cpu.stat", z.cgroup)
	return 0
}

// rss is the process's resident set, in bytes.
func (z *ztunnelProc) rss(t testing.TB) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", z.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", z.pid)
	return 0
}
