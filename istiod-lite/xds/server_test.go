package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// byCaller authenticates by the "caller" metadata: "<ns>/<sa>/<node>", or fails.
type byCaller struct{}

func (byCaller) Authenticate(ctx context.Context) (*authn.Caller, error) {
	md, _ := metadataFrom(ctx)
	parts := strings.Split(md, "/")
	if len(parts) != 3 {
		return nil, authn.ErrUnauthenticated
	}
	return &authn.Caller{Namespace: parts[0], ServiceAccount: parts[1], NodeName: parts[2]}, nil
}

type env struct {
	srv  *Server
	reg  *prometheus.Registry
	logs *testutil.LogBuffer
	dial func(t testing.TB, caller string) (*grpc.ClientConn, error)
}

func newEnv(t *testing.T) *env { return newEnvB(t) }

// testWaypoints are the waypoints of the tests: service account -> the waypoint's Service.
var testWaypoints = map[string]string{"shop/waypoint": "shop/waypoint.shop.svc.cluster.local"}

func testServerConfig() Config {
	return Config{
		ZtunnelServiceAccounts: []string{"istio-system/ztunnel"},
		Waypoint: func(ns, sa string) (string, bool) {
			wp, ok := testWaypoints[ns+"/"+sa]
			return wp, ok
		},
	}
}

func newEnvB(t testing.TB) *env { return newEnvWith(t, testServerConfig()) }

func newEnvWith(t testing.TB, cfg Config) *env {
	t.Helper()
	e := &env{reg: prometheus.NewRegistry(), logs: &testutil.LogBuffer{}}
	log := slog.New(slog.NewTextHandler(e.logs, nil))
	if _, bench := t.(*testing.B); bench {
		log = slog.New(slog.DiscardHandler)
	}
	e.srv = New(log, cfg, byCaller{}, NewMetrics(e.reg))
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(ServerOption())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, e.srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	e.dial = func(t testing.TB, caller string) (*grpc.ClientConn, error) {
		cc, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(callerCreds(caller)))
		if err == nil {
			t.Cleanup(func() { cc.Close() })
		}
		return cc, err
	}
	return e
}

func (e *env) update(t *testing.T, m *model.Snapshot) {
	t.Helper()
	s, err := NewSnapshot(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Update(s)
}

// connectB opens a wildcard workload stream for a benchmark.
func (e *env) connectB(b *testing.B, caller string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	cc, err := e.dial(b, caller)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: caller}, TypeUrl: TypeWorkload}); err != nil {
		b.Fatal(err)
	}
	return st
}

// client is a test xDS client.
type client struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (e *env) connect(t *testing.T, caller, id string, initial map[string]string) *client {
	t.Helper()
	cc, err := e.dial(t, caller)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, stream: st}
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: TypeWorkload, InitialResourceVersions: initial})
	return c
}

func (c *client) send(r *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.stream.Send(r); err != nil {
		c.t.Fatal(err)
	}
}

// recv waits for the next response, failing after a deadline.
func (c *client) recv() *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	type result struct {
		r   *discoveryv3.DeltaDiscoveryResponse
		err error
	}
	ch := make(chan result, 1)
	go func() { r, err := c.stream.Recv(); ch <- result{r, err} }()
	select {
	case res := <-ch:
		if res.err != nil {
			c.t.Fatalf("recv: %v", res.err)
		}
		return res.r
	case <-time.After(5 * time.Second):
		c.t.Fatal("no response within 5s")
		return nil
	}
}

func (c *client) ack(r *discoveryv3.DeltaDiscoveryResponse) {
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
}

type summary struct {
	Type    string
	Names   []string
	Removed []string
}

func summarize(r *discoveryv3.DeltaDiscoveryResponse) summary {
	s := summary{Type: shortType(r.TypeUrl), Removed: r.RemovedResources}
	for _, res := range r.Resources {
		s.Names = append(s.Names, res.Name)
	}
	return s
}

func wl(uid, ns, node string, authz ...string) *workloadv1.Workload {
	return &workloadv1.Workload{Uid: uid, Name: uid, Namespace: ns, Node: node, AuthorizationPolicies: authz}
}

func baseModel() *model.Snapshot {
	return &model.Snapshot{
		Workloads: map[string]*workloadv1.Workload{
			"a1": wl("a1", "shop", "node-a", "shop/db-allow"),
			"b1": wl("b1", "shop", "node-b", "shop/web-allow"),
			"b2": wl("b2", "other", "node-b"),
		},
		Services: map[string]*workloadv1.Service{
			"shop/web.shop.svc.cluster.local": {Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local"},
		},
		Authorizations: map[string]*workloadv1.Authorization{
			"istio-system/global": {Name: "global", Namespace: "istio-system", Scope: workloadv1.Scope_GLOBAL},
			"shop/ns-wide":        {Name: "ns-wide", Namespace: "shop", Scope: workloadv1.Scope_NAMESPACE},
			"other/ns-wide":       {Name: "ns-wide", Namespace: "other", Scope: workloadv1.Scope_NAMESPACE},
			"shop/db-allow":       {Name: "db-allow", Namespace: "shop"},
			"shop/web-allow":      {Name: "web-allow", Namespace: "shop"},
		},
	}
}

func TestDeltaPush(t *testing.T) {
	e := newEnv(t)
	e.update(t, baseModel())
	c := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel-a", nil)
	r := c.recv()
	if diff := cmp.Diff(summary{Type: "Workload", Names: []string{"a1", "b1", "b2"}}, summarize(r)); diff != "" {
		t.Errorf("initial workloads (-want +got):\n%s", diff)
	}
	c.ack(r)
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAuthorization})
	r = c.recv()
	// node-a runs a shop workload bound to db-allow: not web-allow, not other's namespace policy.
	if diff := cmp.Diff(summary{Type: "Authorization", Names: []string{"istio-system/global", "shop/db-allow", "shop/ns-wide"}}, summarize(r)); diff != "" {
		t.Errorf("authorizations for node-a (-want +got):\n%s", diff)
	}
	c.ack(r)

	// One workload changes, one goes away: only those are sent.
	m := baseModel()
	m.Workloads["b1"].Status = workloadv1.WorkloadStatus_UNHEALTHY
	delete(m.Workloads, "b2")
	e.update(t, m)
	r = c.recv()
	if diff := cmp.Diff(summary{Type: "Workload", Names: []string{"b1"}, Removed: []string{"b2"}}, summarize(r)); diff != "" {
		t.Errorf("delta (-want +got):\n%s", diff)
	}
	c.ack(r)

	// A new workload on node-a bound to web-allow makes that policy visible to node-a.
	m.Workloads["a2"] = wl("a2", "shop", "node-a", "shop/web-allow")
	e.update(t, m)
	got := []summary{summarize(c.recv()), summarize(c.recv())}
	want := []summary{{Type: "Workload", Names: []string{"a2"}}, {Type: "Authorization", Names: []string{"shop/web-allow"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("binding change (-want +got):\n%s", diff)
	}

	// An identical snapshot sends nothing; the next real change arrives alone.
	e.update(t, m)
	m.Workloads["a1"].Status = workloadv1.WorkloadStatus_UNHEALTHY
	e.update(t, m)
	if diff := cmp.Diff(summary{Type: "Workload", Names: []string{"a1"}}, summarize(c.recv())); diff != "" {
		t.Errorf("after a no-op update (-want +got):\n%s", diff)
	}
}

func TestReconnectWithVersions(t *testing.T) {
	e := newEnv(t)
	e.update(t, baseModel())
	c := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel-a", nil)
	r := c.recv()
	held := map[string]string{}
	for _, res := range r.Resources {
		held[res.Name] = res.Version
	}
	c.ack(r)
	if n := promtest.ToFloat64(e.srv.metrics.connected); n != 1 {
		t.Errorf("connected = %v, want 1", n)
	}

	// While the client is away, b1 changes and b2 is deleted.
	m := baseModel()
	m.Workloads["b1"].Status = workloadv1.WorkloadStatus_UNHEALTHY
	delete(m.Workloads, "b2")
	e.update(t, m)

	c2 := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel-a", held)
	if diff := cmp.Diff(summary{Type: "Workload", Names: []string{"b1"}, Removed: []string{"b2"}}, summarize(c2.recv())); diff != "" {
		t.Errorf("after reconnect (-want +got):\n%s", diff)
	}
}

func TestNACK(t *testing.T) {
	e := newEnv(t)
	e.update(t, baseModel())
	c := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel-a", nil)
	r := c.recv()
	c.ack(r)
	m := baseModel()
	m.Workloads["a1"].Name = "renamed"
	e.update(t, m)
	r = c.recv()
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce,
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "bad workload a1"}})
	testutil.Eventually(t, 5*time.Second, "the NACK counted", func() bool {
		return promtest.ToFloat64(e.srv.metrics.nacks.WithLabelValues("Workload")) == 1
	})
	logs := e.logs.String()
	for _, want := range []string{"client rejected configuration", "proxy=ztunnel-a", `reason="bad workload a1"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	testutil.Eventually(t, 5*time.Second, "the NACK in the client status", func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && cs[0].Types[TypeWorkload].LastNACK == "bad workload a1" && cs[0].Types[TypeWorkload].AckedVersion == "1"
	})
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	e.update(t, baseModel())
	for _, tc := range []struct {
		caller string
		code   codes.Code
	}{
		{"garbage", codes.Unauthenticated},
		{"istio-system/ztunnel/", codes.PermissionDenied}, // ztunnel without a node
		{"shop/web/node-a", codes.PermissionDenied},       // an application's service account
		{"other/waypoint/node-a", codes.PermissionDenied}, // a waypoint's name, not a waypoint's account
	} {
		cc, err := e.dial(t, tc.caller)
		if err != nil {
			t.Fatal(err)
		}
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(context.Background())
		if err == nil {
			_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeWorkload})
			_, err = st.Recv()
		}
		if status.Code(err) != tc.code {
			t.Errorf("caller %q: got %v, want %v", tc.caller, err, tc.code)
		}
	}
	// A waypoint sees no authorizations.
	c := e.connect(t, "shop/waypoint/node-b", "waypoint", nil)
	c.recv()
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeAuthorization})
	if s := summarize(c.recv()); len(s.Names) != 0 {
		t.Errorf("waypoint got authorizations %v", s.Names)
	}
}

// A client that never ACKs must not grow the server's pending table without bound.
func TestPendingBounded(t *testing.T) {
	snap, err := NewSnapshot(baseModel(), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := newStream(&Proxy{ID: "z", Role: RoleZtunnel, Node: "node-a"})
	for i := range 200 {
		// Re-subscribing to a resource makes the server send it again: one response each time.
		const name = "shop/web.shop.svc.cluster.local"
		resp, _ := st.onRequest(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService,
			ResourceNamesUnsubscribe: []string{name}, ResourceNamesSubscribe: []string{name}}, snap)
		if i > 0 && (resp == nil || len(resp.res) != 1) {
			t.Fatalf("round %d: response %v", i, resp)
		}
		// ACK an arbitrary recent response now and then, as a misbehaving client might.
		if i%3 == 0 {
			st.onRequest(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService, ResponseNonce: fmt.Sprint(st.nonce)}, snap)
		}
		if len(st.pending) > maxPending {
			t.Fatalf("pending grew to %d", len(st.pending))
		}
	}
}

// Changes published faster than a stream pushes are coalesced, and none is lost.
func TestCoalescedUpdates(t *testing.T) {
	e := newEnv(t)
	e.update(t, baseModel())
	c := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel-a", nil)
	c.ack(c.recv())
	m := baseModel()
	for i, uid := range []string{"a1", "b1", "b2", "a1"} {
		m.Workloads[uid] = proto.Clone(m.Workloads[uid]).(*workloadv1.Workload)
		m.Workloads[uid].Name = fmt.Sprint("v", i)
		e.update(t, m)
	}
	wantNames := map[string]string{"a1": "v3", "b1": "v1", "b2": "v2"}
	got := map[string]string{}
	for !cmp.Equal(wantNames, got) { // recv fails the test if nothing more arrives
		r := c.recv()
		for _, res := range r.Resources {
			var w workloadv1.Workload
			if err := res.Resource.UnmarshalTo(&w); err != nil {
				t.Fatal(err)
			}
			got[res.Name] = w.Name
		}
		c.ack(r)
	}
}

// A name subscribed to that does not exist is answered as removed, so the client does not wait.
func TestSubscribeMissing(t *testing.T) {
	snap, err := NewSnapshot(baseModel(), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := newStream(&Proxy{ID: "z", Role: RoleZtunnel, Node: "node-a"})
	resp, _ := st.onRequest(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService,
		ResourceNamesSubscribe: []string{"shop/web.shop.svc.cluster.local", "shop/nope.shop.svc.cluster.local"}}, snap)
	if diff := cmp.Diff(summary{Type: "Service", Names: []string{"shop/web.shop.svc.cluster.local"},
		Removed: []string{"shop/nope.shop.svc.cluster.local"}}, summarize(decode(t, resp))); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	resp, _ = st.onRequest(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService,
		ResourceNamesSubscribe: []string{"other/gone.other.svc.cluster.local"}}, snap)
	if diff := cmp.Diff(summary{Type: "Service", Removed: []string{"other/gone.other.svc.cluster.local"}}, summarize(decode(t, resp))); diff != "" {
		t.Errorf("later subscription (-want +got):\n%s", diff)
	}
}

// At most bulkInFlight large first pushes are in flight at once; answering one lets the next go.
func TestBulkResponsesBounded(t *testing.T) {
	e := newEnv(t)
	e.update(t, scaleModel(bulkResources))
	var clients []*client
	bulkInFlight := cap(e.srv.bulk)
	for i := range bulkInFlight + 1 {
		clients = append(clients, e.connect(t, fmt.Sprintf("istio-system/ztunnel/node-%d", i), fmt.Sprintf("z%d", i), nil))
	}
	// Receive from every client; exactly bulkInFlight arrive while none is answered.
	got := make(chan int, len(clients))
	for i, c := range clients {
		go func() {
			if _, err := c.stream.Recv(); err == nil {
				got <- i
			}
		}()
	}
	var first []int
	for range bulkInFlight {
		select {
		case i := <-got:
			first = append(first, i)
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d first pushes arrived, want %d", len(first), bulkInFlight)
		}
	}
	select {
	case i := <-got:
		t.Fatalf("client %d got its first push while %d others were unanswered", i, bulkInFlight)
	case <-time.After(300 * time.Millisecond):
	}
	clients[first[0]].send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeWorkload, ResponseNonce: "1"})
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("an answered first push did not free its slot")
	}
}
