//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkAgentOnboarding measures what a user waits for when they label a namespace: the time
// from the label to the last of its 100 running pods (on two nodes) annotated enabled, with the
// agent and the ZDS peer from deploy/. Each iteration labels, waits, unlabels and waits for the
// annotations to go. Reported: the last pod's time (s/onboard, the target is 1 s) and the
// median pod's.
func BenchmarkAgentOnboarding(b *testing.B) {
	const pods = 100
	ctx := context.Background()
	cs := client(b)
	deployAgent(b, cs)
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
	b.ResetTimer()
	for range b.N {
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
