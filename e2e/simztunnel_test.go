//go:build e2e

package e2e

// Simulated ztunnels for the istiod-lite scale harness (scale_test.go). A simulated ztunnel reads
// its responses as bytes and walks them with protowire instead of decoding them into messages: at
// 50,000 pods a first push is about 17 MB, and a thousand ztunnels decoding theirs in the test
// process would measure the harness, not istiod-lite. Names are compared in place; versions are
// kept only when asked (track), which the small test and the model probe do.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// rawMsg receives a message's bytes undecoded (rawCodec).
type rawMsg struct{ b []byte }

// rawCodec hands received rawMsgs their bytes and encodes and decodes everything else as protobuf.
type rawCodec struct{ proto encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*rawMsg); ok {
		m.b = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (c rawCodec) Name() string { return c.proto.Name() }

// wireResponse is a DeltaDiscoveryResponse as bytes: res holds each resource's Resource message,
// sub-slices of the received buffer.
type wireResponse struct {
	typ, nonce string
	res        [][]byte
	removed    []string
}

// Field numbers of DeltaDiscoveryResponse and Resource (envoy.service.discovery.v3).
const (
	respResources = 2
	respTypeURL   = 4
	respNonce     = 5
	respRemoved   = 6
	resVersion    = 1
	resName       = 3
)

// walk calls f with the number and, for length-delimited fields, the bytes of each field of the
// message b (other wire types are skipped).
func walk(b []byte, f func(num protowire.Number, v []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			f(num, v)
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

func parseResponse(b []byte) (wireResponse, error) {
	var r wireResponse
	err := walk(b, func(num protowire.Number, v []byte) {
		switch num {
		case respResources:
			r.res = append(r.res, v)
		case respTypeURL:
			r.typ = string(v)
		case respNonce:
			r.nonce = string(v)
		case respRemoved:
			r.removed = append(r.removed, string(v))
		}
	})
	return r, err
}

// nameVersion returns the name and version of a Resource message, in place.
func nameVersion(res []byte) (name, version []byte) {
	_ = walk(res, func(num protowire.Number, v []byte) {
		switch num {
		case resName:
			name = v
		case resVersion:
			version = v
		}
	})
	return name, version
}

// delivery is a simulated ztunnel's receipt of a resource it was waiting for.
type delivery struct {
	at        time.Time
	resources []string // names of the resources in the response that carried it
	removed   []string // and of those it removed
}

// simZtunnel is a ztunnel's delta xDS stream: it subscribes to every type with a wildcard, ACKs
// every response, counts the bytes received and the resources of each type's first response,
// keeps the resources' versions when tracking, and tells waiters when a resource they expect
// arrives.
type simZtunnel struct {
	st     discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	synced chan struct{} // closed once every type had its first response
	done   chan struct{} // closed when the stream ends

	mu      sync.Mutex
	held    map[string]map[string]string // type -> name -> version; nil unless tracking
	first   map[string]int               // type -> resources in its first response
	bytes   int64
	expect  map[string]chan delivery
	lastErr error
}

// connectZtunnel opens a ztunnel's stream with token and subscribes; the connection is closed
// when ctx ends.
func connectZtunnel(ctx context.Context, ist *istiod, token, id string, track bool) (*simZtunnel, error) {
	cc, err := ist.conn(token)
	if err != nil {
		return nil, err
	}
	raw := grpc.ForceCodecV2(rawCodec{proto: encoding.GetCodecV2("proto")})
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx, raw)
	if err != nil {
		cc.Close()
		return nil, fmt.Errorf("%s: open stream: %w", id, err)
	}
	z := &simZtunnel{st: st, synced: make(chan struct{}), done: make(chan struct{}),
		first: map[string]int{}, expect: map[string]chan delivery{}}
	if track {
		z.held = map[string]map[string]string{}
	}
	for i, typ := range ztunnelTypes {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ}
		if i == 0 {
			req.Node = &corev3.Node{Id: id}
		}
		if track {
			z.held[typ] = map[string]string{}
		}
		if err := st.Send(req); err != nil {
			cc.Close()
			return nil, fmt.Errorf("%s: subscribe: %w", id, err)
		}
	}
	go func() {
		z.run()
		cc.Close()
	}()
	return z, nil
}

func (z *simZtunnel) run() {
	defer close(z.done)
	for {
		var m rawMsg
		err := z.st.RecvMsg(&m)
		var r wireResponse
		if err == nil {
			r, err = parseResponse(m.b)
		}
		if err != nil {
			z.mu.Lock()
			z.lastErr = err
			z.mu.Unlock()
			return
		}
		at := time.Now()
		z.mu.Lock()
		z.bytes += int64(len(m.b))
		for _, res := range r.res {
			name, version := nameVersion(res)
			if z.held != nil {
				z.held[r.typ][string(name)] = string(version)
			}
			if ch, ok := z.expect[string(name)]; ok {
				d := delivery{at: at, removed: r.removed}
				for _, res := range r.res {
					n, _ := nameVersion(res)
					d.resources = append(d.resources, string(n))
				}
				ch <- d
				delete(z.expect, string(name))
			}
		}
		if z.held != nil {
			for _, n := range r.removed {
				delete(z.held[r.typ], n)
			}
		}
		if _, ok := z.first[r.typ]; !ok {
			z.first[r.typ] = len(r.res)
			if len(z.first) == len(ztunnelTypes) {
				close(z.synced)
			}
		}
		z.mu.Unlock()
		if err := z.st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.typ, ResponseNonce: r.nonce}); err != nil {
			return
		}
	}
}

// await registers interest in the next delivery of resource name.
func (z *simZtunnel) await(name string) <-chan delivery {
	ch := make(chan delivery, 1)
	z.mu.Lock()
	z.expect[name] = ch
	z.mu.Unlock()
	return ch
}

func (z *simZtunnel) received() int64 {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.bytes
}

// missing returns how many of uids the ztunnel does not hold as workloads; it needs tracking.
func (z *simZtunnel) missing(uids []types.UID) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	n := 0
	for _, u := range uids {
		if _, ok := z.held[typeWorkload][string(u)]; !ok {
			n++
		}
	}
	return n
}

// count returns how many resources of typ the ztunnel holds; it needs tracking.
func (z *simZtunnel) count(typ string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return len(z.held[typ])
}

// firstCount returns how many resources of typ came in the ztunnel's first response of it.
func (z *simZtunnel) firstCount(typ string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.first[typ]
}

func (z *simZtunnel) err() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.lastErr
}

// fleet is one simulated ztunnel per simulated node.
type fleet struct {
	zs     []*simZtunnel
	cancel context.CancelFunc
}

// connectFleet connects a ztunnel for each simulated node at once and returns when every one
// has had its first response of each type (its full initial state), with how long that took.
// track keeps every resource's version on every ztunnel (see simZtunnel.held).
func connectFleet(t testing.TB, ist *istiod, tokens []string, track bool) (*fleet, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{zs: make([]*simZtunnel, len(tokens)), cancel: cancel}
	t.Cleanup(f.close)
	start := time.Now()
	err := parallel(len(tokens), func(i int) (err error) {
		f.zs[i], err = connectZtunnel(ctx, ist, tokens[i], "ztunnel-"+simNodeName(i), track)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Minute)
	for i, z := range f.zs {
		select {
		case <-z.synced:
		case <-z.done:
			t.Fatalf("ztunnel on %s: stream ended before its first push: %v", simNodeName(i), z.err())
		case <-timeout:
			t.Fatalf("ztunnel on %s: no first push after 10 minutes", simNodeName(i))
		}
	}
	return f, time.Since(start)
}

func (f *fleet) close() {
	f.cancel()
	for _, z := range f.zs {
		if z != nil {
			<-z.done
		}
	}
}

func (f *fleet) received() int64 {
	var n int64
	for _, z := range f.zs {
		n += z.received()
	}
	return n
}

// change toggles the redirection annotation of simulated pod key ("<ns>/<name>"), as the node
// agent would, which changes its workload, and waits until every ztunnel has the change. It
// returns the time from just before the API call to the last ztunnel's receipt, the time the API
// call itself took (the API server's share, on a machine it shares with everything else), and the
// deliveries.
func (f *fleet) change(t testing.TB, sc *simCluster, key string) (lat, write time.Duration, out []delivery) {
	t.Helper()
	ns, name, _ := strings.Cut(key, "/")
	sc.mu.Lock()
	uid := sc.pods[key]
	sc.disabled[key] = !sc.disabled[key]
	value := mesh.RedirectionEnabled
	if sc.disabled[key] {
		value = mesh.RedirectionDisabled
	}
	sc.mu.Unlock()
	waits := make([]<-chan delivery, len(f.zs))
	for i, z := range f.zs {
		waits[i] = z.await(string(uid))
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{mesh.AnnotationRedirection: value}}})
	start := time.Now()
	if _, err := sc.cs.CoreV1().Pods(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch %s/%s: %v", ns, name, err)
	}
	write = time.Since(start)
	out = make([]delivery, len(f.zs))
	var last time.Time
	timeout := time.After(30 * time.Second)
	for i, w := range waits {
		select {
		case d := <-w:
			out[i] = d
			if d.at.After(last) {
				last = d.at
			}
		case <-f.zs[i].done:
			t.Fatalf("ztunnel on %s: stream ended: %v", simNodeName(i), f.zs[i].err())
		case <-timeout:
			t.Fatalf("ztunnel on %s: the change of %s/%s did not arrive in 30s", simNodeName(i), ns, name)
		}
	}
	return last.Sub(start), write, out
}
