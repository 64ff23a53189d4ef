//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/bench"
	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
)

// waypointResult is what BenchmarkWaypoint measured, medians over its rounds: 1 KiB HTTP/1.1
// POSTs at a fixed rate on kept-alive connections from node-1 to node-2, on the L4 mesh and
// through a waypoint (on either node, where the lab scheduled it).
type waypointResult struct {
	Commit  string  `json:"commit"`
	Rate    int     `json:"rate"`
	Rounds  int     `json:"rounds"`
	MeshP50 float64 `json:"meshP50Ms"`
	MeshP99 float64 `json:"meshP99Ms"`
	WpP50   float64 `json:"waypointP50Ms"`
	WpP99   float64 `json:"waypointP99Ms"`
	// AddedP99 is the median over rounds of (waypoint p99 − mesh p99) of the same round.
	AddedP99 float64 `json:"addedP99Ms"`
	// WaypointCPU is the waypoint's CPU time per second of load (cores), WaypointSysCPU the
	// kernel's part of it (system calls, and the network stack's work done in the waypoint's
	// context); WaypointRSS its resident memory after the load, in MB, of which WaypointRSSFile
	// is its binary's pages (code and read-only data touched).
	WaypointCPU     float64 `json:"waypointCores"`
	WaypointSysCPU  float64 `json:"waypointSystemCores"`
	WaypointRSS     float64 `json:"waypointRssMB"`
	WaypointRSSFile float64 `json:"waypointRssFileMB"`
	Errors          int64   `json:"errors"`
}

// BenchmarkWaypoint measures what a waypoint adds over the L4 mesh at 1000 rps of 1 KiB HTTP
// (issue 15's targets: ≤ 0.1 core, ≤ 25 MB, ≤ 0.5 ms added p99). Its figures go to lab.bench with
// the other lab benchmarks, and from there into BENCHMARKS.md.
func BenchmarkWaypoint(b *testing.B) {
	const rate, rounds, dur = 1000, 3, 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cs := client(b)
	installMesh(b, cs)
	ns := waypointNamespace(b, cs, "wpbench", "testdata/waypoint-bench.yaml", 4)
	eventually(b, 30*time.Second, "every pod enabled", func() bool { return allAnnotated(b, cs, ns, mesh.RedirectionEnabled) })
	wps, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name=wp"})
	if err != nil || len(wps.Items) != 1 {
		b.Fatalf("waypoint pods: %v, %v", wps, err)
	}
	wp := &wps.Items[0]
	eventually(b, 30*time.Second, "Service viawp bound to the waypoint", func() bool {
		return kubectl(b, "-n", ns, "get", "service", "viawp", "-o",
			`jsonpath={.status.conditions[?(@.type=="istio.io/WaypointBound")].status}`) == "True"
	})
	proc := sidecarProc(b, wp, "waypoint")
	proc.pod = wp // its admin port, for a CPU profile
	clientBin := filepath.Join(labCfg.BinDir, "client")
	load := func(svc string, d time.Duration) images.LoadResult {
		b.Helper()
		out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "bench", "-mode", images.ModeRate, "-http",
			"-rate", strconv.Itoa(rate), "-conns", "10", "-size", "1024", "-duration", d.String(), "-addr", svc+"."+ns+":80")
		if err != nil {
			b.Fatalf("load on %s: %v: %s", svc, err, out)
		}
		var r images.LoadResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			b.Fatalf("load result %q: %v", out, err)
		}
		return r
	}
	load("direct", time.Second) // warm both paths: connections, certificates, pools
	load("viawp", time.Second)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	var meshP50, meshP99, wpP50, wpP99, added, cores, sysCores []float64
	res := waypointResult{Commit: gitDescribe(), Rate: rate, Rounds: rounds}
	b.ResetTimer()
	for i := range rounds {
		m := load("direct", dur)
		cpu0, sys0 := proc.cpu(b), proc.cpuStat(b, "system_usec")
		var profiled sync.WaitGroup
		if i == 0 { // where the waypoint's time goes, from the first round
			profiled.Go(func() {
				proc.saveProfile(b, "profile?seconds="+strconv.Itoa(int(dur/time.Second)-1), bench.WaypointProfilePath(benchResults(), bench.ProfileRate))
			})
		}
		w := load("viawp", dur)
		profiled.Wait()
		cores = append(cores, (proc.cpu(b)-cpu0).Seconds()/(float64(w.ElapsedNS)/1e9))
		sysCores = append(sysCores, (proc.cpuStat(b, "system_usec")-sys0).Seconds()/(float64(w.ElapsedNS)/1e9))
		meshP50, meshP99 = append(meshP50, ms(m.Percentile(50))), append(meshP99, ms(m.Percentile(99)))
		wpP50, wpP99 = append(wpP50, ms(w.Percentile(50))), append(wpP99, ms(w.Percentile(99)))
		added = append(added, ms(w.Percentile(99)-m.Percentile(99)))
		res.Errors += m.Errors + w.Errors
	}
	b.StopTimer()
	mem := proc.status(b, "VmRSS:", "RssFile:")
	res.MeshP50, res.MeshP99, res.WpP50, res.WpP99 = median(meshP50), median(meshP99), median(wpP50), median(wpP99)
	res.AddedP99, res.WaypointCPU, res.WaypointSysCPU = median(added), median(cores), median(sysCores)
	res.WaypointRSS, res.WaypointRSSFile = float64(mem["VmRSS:"])/1e6, float64(mem["RssFile:"])/1e6
	b.ReportMetric(res.AddedP99, "added-p99-ms")
	b.ReportMetric(res.WaypointCPU, "waypoint-cores")
	b.ReportMetric(res.WaypointSysCPU, "waypoint-system-cores")
	b.ReportMetric(res.WaypointRSS, "waypoint-rss-MB")
	b.ReportMetric(res.WaypointRSSFile, "waypoint-rss-file-MB")
	b.ReportMetric(res.WpP99, "waypoint-p99-ms")
	b.ReportMetric(res.MeshP99, "mesh-p99-ms")
	b.Logf("waypoint at %d rps, 1 KiB HTTP, medians of %d rounds: %+v", rate, rounds, res)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2]
}
