package xds

import (
	"fmt"
	"maps"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

func scaleModel(n int) *model.Snapshot {
	m := &model.Snapshot{Workloads: map[string]*workloadv1.Workload{}, Services: map[string]*workloadv1.Service{},
		Authorizations: map[string]*workloadv1.Authorization{}}
	for i := range n {
		uid := fmt.Sprintf("uid-%d", i)
		m.Workloads[uid] = &workloadv1.Workload{Uid: uid, Name: fmt.Sprintf("pod-%d", i), Namespace: fmt.Sprintf("ns-%d", i%100),
			Node: fmt.Sprintf("node-%d", i%100), Addresses: [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}},
			ServiceAccount: "default", TrustDomain: "cluster.local", TunnelProtocol: workloadv1.TunnelProtocol_HBONE}
	}
	return m
}

// BenchmarkSinglePodChange measures, at 10k workloads, serialising a new snapshot, finding what
// changed, and computing one ztunnel's response; it reports the response's size in bytes.
func BenchmarkSinglePodChange(b *testing.B) {
	m := scaleModel(10000)
	prev, err := NewSnapshot(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	st := newStream(&Proxy{ID: "z", Role: RoleZtunnel, Node: "node-1"})
	st.onRequest(mustReq(TypeWorkload), prev)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		m = changeOne(m, i)
		next, err := prev.Next(m, nil)
		if err != nil {
			b.Fatal(err)
		}
		resps := st.onPush(next, changed(prev, next))
		if len(resps) != 1 || len(resps[0].res) != 1 {
			b.Fatalf("got %d responses", len(resps))
		}
		enc, err := resps[0].encode()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(enc.Len()), "bytes/change")
		prev = next
	}
}

// changeOne returns a copy of m (a model snapshot is immutable once used) in which workload uid-7
// has a new name, as a model.Translator would hand it over: the other messages are shared.
func changeOne(m *model.Snapshot, i int) *model.Snapshot {
	next := *m
	next.Workloads = maps.Clone(m.Workloads)
	w := proto.Clone(m.Workloads["uid-7"]).(*workloadv1.Workload)
	w.Name = fmt.Sprintf("pod-7-%d", i)
	next.Workloads["uid-7"] = w
	return &next
}

func mustReq(typ string) *discoveryv3.DeltaDiscoveryRequest {
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ}
}

// BenchmarkFanOut100 measures, at 10k workloads, the time from publishing a snapshot with one
// changed workload to all of 100 connected ztunnels (over in-memory gRPC) having received it.
// Translation is not included (see model's BenchmarkTranslate10k).
func BenchmarkFanOut100(b *testing.B) {
	e := newEnvB(b)
	m := scaleModel(10000)
	snap, err := NewSnapshot(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	e.srv.Update(snap)
	const clients = 100
	got := make(chan struct{}, clients)
	for i := range clients {
		st := e.connectB(b, fmt.Sprintf("istio-system/ztunnel/node-%d", i))
		first, err := st.Recv() // initial state
		if err != nil {
			b.Fatal(err)
		}
		// Answered, as a ztunnel does: an unanswered first push holds a bulk slot until BulkTimeout.
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: first.TypeUrl, ResponseNonce: first.Nonce}); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
				got <- struct{}{}
			}
		}()
	}
	i := 0
	for b.Loop() {
		i++
		m = changeOne(m, i)
		next, err := snap.Next(m, nil)
		if err != nil {
			b.Fatal(err)
		}
		e.srv.Update(next)
		snap = next
		for range clients {
			<-got
		}
	}
}

// BenchmarkFirstPushEncode measures what one proxy's first push of 10k workloads costs istiod-lite
// to encode: pre-encoded (what is sent) against marshalling the same response as a message
// (what the protobuf codec would do for each proxy).
func BenchmarkFirstPushEncode(b *testing.B) {
	snap, err := NewSnapshot(scaleModel(10000), nil)
	if err != nil {
		b.Fatal(err)
	}
	st := newStream(&Proxy{ID: "z", Role: RoleZtunnel, Node: "node-a"})
	r, _ := st.onRequest(mustReq(TypeWorkload), snap)
	if r == nil || len(r.res) != 10000 {
		b.Fatal("no first push of 10k workloads")
	}
	b.Run("pre-encoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bs, err := r.encode()
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(bs.Len()))
		}
	})
	b.Run("marshal", func(b *testing.B) {
		msg := decode(b, r)
		b.ReportAllocs()
		for b.Loop() {
			out, err := proto.Marshal(msg)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(out)))
		}
	})
}
