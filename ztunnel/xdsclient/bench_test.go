package xdsclient

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// podLike returns workload i as istiod-lite sends a typical pod: one IPv4 address, one service,
// a locality.
func podLike(i int) *workloadv1.Workload {
	ns := fmt.Sprintf("ns-%d", i%100)
	name := fmt.Sprintf("app-%d-7d9f8c6b5-%05d", i%500, i)
	a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	return &workloadv1.Workload{
		Uid:            fmt.Sprintf("3f1c2a9e-%04x-4b7d-9c1e-%012x", i%0xffff, i),
		Name:           name,
		Namespace:      ns,
		Addresses:      [][]byte{a.AsSlice()},
		Node:           fmt.Sprintf("node-%d", i%100),
		ServiceAccount: fmt.Sprintf("app-%d", i%500),
		TrustDomain:    "cluster.local",
		TunnelProtocol: workloadv1.TunnelProtocol_HBONE,
		Services: map[string]*workloadv1.PortList{
			fmt.Sprintf("%s/app-%d.%s.svc.cluster.local", ns, i%500, ns): {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}},
		},
		WorkloadName:  fmt.Sprintf("app-%d", i%500),
		CanonicalName: ns + "/" + name,
		Locality:      &workloadv1.Locality{Region: "europe-west1", Zone: "europe-west1-b"},
	}
}

func firstPush(n int) *deltaResponse {
	rs := make([]*discoveryv3.Resource, n)
	for i := range n {
		rs[i] = wlRes(podLike(i))
	}
	return fromEnvoy(resp(TypeWorkload, "1", nil, rs...))
}

// BenchmarkApplyFirstPush applies the first push of 10,000 workloads to an empty state.
func BenchmarkApplyFirstPush(b *testing.B) {
	r := firstPush(10_000)
	b.ReportAllocs()
	for b.Loop() {
		apply(emptyState(), r, nil)
	}
}

// BenchmarkApplyOneChange applies one changed workload to a state of 10,000: the cost of every
// later push, dominated by copying the maps of the type (copy-on-write).
func BenchmarkApplyOneChange(b *testing.B) {
	st, _ := apply(emptyState(), firstPush(10_000), nil)
	w := podLike(42)
	w.Status = workloadv1.WorkloadStatus_UNHEALTHY
	r := fromEnvoy(resp(TypeWorkload, "2", nil, wlRes(w)))
	b.ReportAllocs()
	for b.Loop() {
		apply(st, r, nil)
	}
}

// BenchmarkLookup is the data path's read: Load and an address lookup.
func BenchmarkLookup(b *testing.B) {
	s := NewStore()
	st, _ := apply(s.Load(), firstPush(10_000), nil)
	s.publish(st)
	a := netip.AddrFrom4([4]byte{10, 0, 1, 42})
	b.ReportAllocs()
	for b.Loop() {
		if s.Load().WorkloadByAddr(a) == nil {
			b.Fatal("not found")
		}
	}
}

// BenchmarkStateMemory reports the heap a State of 10,000 workloads holds (B/state); the
// package doc quotes it.
func BenchmarkStateMemory(b *testing.B) {
	r := firstPush(10_000)
	var ms runtime.MemStats
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		st, _ := apply(emptyState(), r, nil)
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc-before), "B/state")
		runtime.KeepAlive(st)
	}
}
