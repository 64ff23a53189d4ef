//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/e2e/lab"

	"github.com/ambient-mesh/ambient/api/mesh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkAgentOnboarding measures what a user waits for when they label a namespace: the time
// from the label to the last of its 100 running pods (on two nodes) annotated enabled, with the
// agent and the ZDS peer from deploy/. Each of 5 rounds labels, waits, unlabels and waits for
// the annotations to go (whatever b.N: make bench runs it once, beside BenchmarkL4). Reported:
// the last pod's time (s/onboard, the target is 1 s) and the median pod's, medians of the rounds.
func BenchmarkAgentOnboarding(b *testing.B) {
	const pods, rounds = 100, 5
	ctx := context.Background()
	cs := client(b)
	deployAgent(b, cs)
	applyPeer(b)
	b.Cleanup(func() { _ = cs.AppsV1().DaemonSets("istio-system").Delete(ctx, "zdspeer", metav1.DeleteOptions{}) })
	ns := newNamespace(b, cs, "onboard-bench")
	apply(b, ns, []byte(fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: idle}
spec:
  replicas: %d
  selector: {matchLabels: {app: idle}}
  template:
    metadata: {labels: {app: idle}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: ambient/client}]
`, pods)))
	eventually(b, 5*time.Minute, fmt.Sprintf("%d pods running", pods), func() bool {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		n := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				n++
			}
		}
		return n == pods
	})
	var lasts, medians []time.Duration
	stepsBefore := agentSteps(b)
	b.ResetTimer()
	for range rounds {
		start := time.Now()
		labelNamespace(b, cs, ns, mesh.DataplaneModeAmbient)
		seen := map[string]time.Duration{}
		w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		deadline := time.After(2 * time.Minute)
		for len(seen) < pods {
			select {
			case ev := <-w.ResultChan():
				if p, ok := ev.Object.(*corev1.Pod); ok && p.Annotations[mesh.AnnotationRedirection] == mesh.RedirectionEnabled {
					if _, dup := seen[p.Name]; !dup {
						seen[p.Name] = time.Since(start)
					}
				}
			case <-deadline:
				b.Fatalf("%d of %d pods enabled after 2 minutes", len(seen), pods)
			}
		}
		w.Stop()
		times := make([]time.Duration, 0, pods)
		for _, d := range seen {
			times = append(times, d)
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		lasts, medians = append(lasts, times[pods-1]), append(medians, times[pods/2])
		b.StopTimer()
		labelNamespace(b, cs, ns, "")
		eventually(b, 2*time.Minute, "annotations removed", func() bool { return allAnnotated(b, cs, ns, "") })
		b.StartTimer()
	}
	b.StopTimer()
	stepsAfter := agentSteps(b)
	for step, after := range stepsAfter {
		before := stepsBefore[step]
		if n := after[1] - before[1]; n > 0 {
			b.Logf("setup step %-9s %4.0f times, mean %6.2f ms, total %6.0f ms (both nodes)", step, n, (after[0]-before[0])/n*1000, (after[0]-before[0])*1000)
		}
	}
	b.ReportMetric(medianDuration(lasts).Seconds(), "s/onboard")
	b.ReportMetric(medianDuration(medians).Seconds(), "s/median-pod")
	b.ReportMetric(0, "ns/op")
	b.Logf("label to last of %d pods enabled, per round: %v", pods, lasts)
}

func medianDuration(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// agentSteps reads the agents' ambient_agent_setup_step_seconds from every node: per step, the
// sum of seconds and the count, added over the nodes.
func agentSteps(b *testing.B) map[string][2]float64 {
	b.Helper()
	out := map[string][2]float64{}
	for i := 1; i <= labCfg.Nodes; i++ {
		netns := lab.NodeAt(i).Netns
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return lab.DialInNetns(ctx, netns, addr) }}}
		resp, err := hc.Get("http://127.0.0.1:15020/metrics")
		if err != nil {
			b.Fatalf("agent metrics on %s: %v", netns, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			for i, suffix := range []string{"_sum{", "_count{"} {
				name, rest, ok := strings.Cut(line, "ambient_agent_setup_step_seconds"+suffix)
				if !ok || name != "" {
					continue
				}
				step, val, _ := strings.Cut(strings.TrimPrefix(rest, `step="`), `"} `)
				v, _ := strconv.ParseFloat(val, 64)
				cur := out[step]
				cur[i] += v
				out[step] = cur
			}
		}
	}
	return out
}
