package xdsclient

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

// expectACK reads the next request and checks it answers nonce without error (nack false) or
// with an error_detail containing each of reasons (nack true).
func expectACK(t *testing.T, s *fakeStream, typ, nonce string, nack bool, reasons ...string) {
	t.Helper()
	r := s.next(t)
	if r.GetTypeUrl() != typ || r.GetResponseNonce() != nonce {
		t.Fatalf("got an answer of type %q nonce %q, want %q nonce %q", r.GetTypeUrl(), r.GetResponseNonce(), typ, nonce)
	}
	if got := r.GetErrorDetail() != nil; got != nack {
		t.Fatalf("answer to nonce %q: NACK = %v (%v), want %v", nonce, got, r.GetErrorDetail(), nack)
	}
	for _, want := range reasons {
		if !strings.Contains(r.GetErrorDetail().GetMessage(), want) {
			t.Errorf("NACK of nonce %q: %q does not name %q", nonce, r.GetErrorDetail().GetMessage(), want)
		}
	}
}

// expectSubscriptions reads one subscription per known type and returns each one's
// initial_resource_versions.
func expectSubscriptions(t *testing.T, s *fakeStream, node string) map[string]map[string]string {
	t.Helper()
	got := map[string]map[string]string{}
	for i, typ := range knownTypes {
		r := s.next(t)
		if r.GetTypeUrl() != typ {
			t.Fatalf("subscription %d of type %q, want %q", i, r.GetTypeUrl(), typ)
		}
		if d := cmp.Diff([]string{"*"}, r.GetResourceNamesSubscribe()); d != "" {
			t.Errorf("%s: resource_names_subscribe (-want +got):\n%s", typ, d)
		}
		if r.GetResponseNonce() != "" || r.GetErrorDetail() != nil {
			t.Errorf("%s: a subscription carries nonce %q or an error", typ, r.GetResponseNonce())
		}
		if i == 0 && r.GetNode().GetId() != node {
			t.Errorf("first request's node.id = %q, want %q", r.GetNode().GetId(), node)
		}
		got[typ] = r.GetInitialResourceVersions()
	}
	return got
}

func TestClient(t *testing.T) {
	h := newHarness(t)
	h.cfg.Validator = func(typ, name string, m proto.Message) error {
		if name == "ns/bad" {
			return errors.New("unsupported match")
		}
		return nil
	}
	store := NewStore()
	c, err := New(h.cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	ackTime := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c.now = func() time.Time { return ackTime }
	changes, stop := store.Subscribe()
	defer stop()
	run(t, c)

	// First connection: nothing held, wildcard subscriptions, everything answered and ACKed.
	s1 := h.ads.nextStream(t)
	if s1.auth != "Bearer token-1" {
		t.Errorf("authorization %q, want the token file's content", s1.auth)
	}
	for typ, v := range expectSubscriptions(t, s1, "ztunnel~node-1") {
		if len(v) != 0 {
			t.Errorf("%s: first subscription lists initial versions %v", typ, v)
		}
	}
	if c.Synced() {
		t.Fatal("Synced before any response")
	}
	_, _, rootPEM := selfSigned(t, "root")
	w1, w2, w3 := wl("u1", "10.0.0.1"), wl("u2", "10.0.0.2"), wl("u3", "10.0.0.3")
	s := svc("ns", "h.ns.svc.cluster.local", []string{"10.96.0.1"}, 80)
	s1.out <- resp(TypeTrustBundle, "b1", nil, bundleRes(rootPEM))
	expectACK(t, s1, TypeTrustBundle, "b1", false)
	s1.out <- resp(TypeService, "s1", nil, svcRes(s))
	expectACK(t, s1, TypeService, "s1", false)
	s1.out <- resp(TypeWorkload, "w1", nil, wlRes(w1), wlRes(w2))
	expectACK(t, s1, TypeWorkload, "w1", false)
	if c.Synced() {
		t.Fatal("Synced before authorizations were answered")
	}
	s1.out <- resp(TypeAuthorization, "a1", nil) // answered with nothing: still in sync
	expectACK(t, s1, TypeAuthorization, "a1", false)
	if !c.Synced() {
		t.Fatal("not Synced after every type was answered")
	}
	select {
	case <-changes:
	default:
		t.Error("no change notified")
	}
	st := store.Load()
	if st.WorkloadByAddr(netip.MustParseAddr("10.0.0.2")).GetUid() != "u2" ||
		st.ServiceByVIP(netip.MustParseAddrPort("10.96.0.1:80")) == nil || st.TrustBundle() == nil {
		t.Fatal("state after the first push lacks a workload, service or the bundle")
	}

	// A bad resource is NACKed by name and keeps its previous version; the rest applies.
	bad := &discoveryv3.Resource{Name: "u1", Version: "bad", Resource: &anypb.Any{TypeUrl: TypeWorkload, Value: []byte{0xff}}}
	s1.out <- resp(TypeWorkload, "w2", []string{"u2"}, bad, wlRes(w3))
	expectACK(t, s1, TypeWorkload, "w2", true, "u1", "unmarshal")
	s1.out <- resp(TypeAuthorization, "a2", nil, authzRes(authz("ns", "good")), authzRes(authz("ns", "bad")))
	expectACK(t, s1, TypeAuthorization, "a2", true, "ns/bad: unsupported match")
	st = store.Load()
	if st.Workload("u1") == nil || !proto.Equal(st.Workload("u1"), w1) || st.Workload("u2") != nil || st.Workload("u3") == nil {
		t.Errorf("after the NACKed response: want u1 as before, u2 removed, u3 added")
	}
	if st.Authorization("ns/good") == nil || st.Authorization("ns/bad") != nil {
		t.Errorf("after the NACKed authorizations: want ns/good only")
	}
	if logs := h.logs.String(); !strings.Contains(logs, "rejected configuration") || !strings.Contains(logs, "unsupported match") {
		t.Errorf("the NACK's reason is not logged:\n%s", logs)
	}

	// The control plane goes away. The state keeps serving through failed attempts; the token
	// is read anew on reconnect.
	h.ads.refuse.Store(true)
	tok := "token-2"
	h.ads.token.Store(&tok)
	h.writeToken(t, tok)
	before := h.ads.attempts.Load()
	s1.end <- status.Error(codes.Unavailable, "istiod-lite restarting")
	testutil.Eventually(t, 10*time.Second, "three refused reconnection attempts", func() bool {
		return h.ads.attempts.Load() >= before+3
	})
	if c.Stats().Connected {
		t.Error("Connected while the control plane refuses streams")
	}
	if store.Load() != st || !c.Synced() {
		t.Error("the state changed while the control plane was away")
	}

	// Reconnected: the subscriptions list exactly what is held, with the version kept of u1.
	h.ads.refuse.Store(false)
	s2 := h.ads.nextStream(t)
	if s2.auth != "Bearer token-2" {
		t.Errorf("reconnected with %q, want the rotated token", s2.auth)
	}
	want := map[string]map[string]string{
		TypeTrustBundle:   {TrustBundleName: bundleRes(rootPEM).Version},
		TypeService:       {"ns/h.ns.svc.cluster.local": svcRes(s).Version},
		TypeWorkload:      {"u1": wlRes(w1).Version, "u3": wlRes(w3).Version},
		TypeAuthorization: {"ns/good": authzRes(authz("ns", "good")).Version},
	}
	if d := cmp.Diff(want, expectSubscriptions(t, s2, "ztunnel~node-1")); d != "" {
		t.Errorf("initial_resource_versions on reconnect (-want +got):\n%s", d)
	}
	s2.out <- resp(TypeWorkload, "x1", []string{"u3"})
	expectACK(t, s2, TypeWorkload, "x1", false)
	testutil.Eventually(t, 5*time.Second, "u3 removed", func() bool { return store.Load().Workload("u3") == nil })

	stats := c.Stats()
	wantStats := Stats{Connected: true, Streams: 2, Types: map[string]TypeStats{
		TypeTrustBundle:   {Synced: true, LastACK: ackTime, Resources: 1},
		TypeService:       {Synced: true, LastACK: ackTime, Resources: 1},
		TypeWorkload:      {Synced: true, LastACK: ackTime, Resources: 1, NACKs: 1},
		TypeAuthorization: {Synced: true, LastACK: ackTime, Resources: 1, NACKs: 1},
	}}
	if d := cmp.Diff(wantStats, stats); d != "" {
		t.Errorf("Stats (-want +got):\n%s", d)
	}
	// connected and streams, and three per type.
	if n := promtest.CollectAndCount(NewCollector(c)); n != 2+3*len(knownTypes) {
		t.Errorf("collector exports %d metrics, want %d", n, 2+3*len(knownTypes))
	}
	if err := promtest.CollectAndCompare(NewCollector(c), strings.NewReader(`
# HELP ztunnel_xds_nacks_total Responses NACKed (a resource refused), by resource type.
# TYPE ztunnel_xds_nacks_total counter
ztunnel_xds_nacks_total{type="Authorization"} 1
ztunnel_xds_nacks_total{type="Service"} 0
ztunnel_xds_nacks_total{type="TrustBundle"} 0
ztunnel_xds_nacks_total{type="Workload"} 1
`), "ztunnel_xds_nacks_total"); err != nil {
		t.Error(err)
	}
}

// A response of a type not subscribed to is NACKed and changes nothing.
func TestClientUnsubscribedType(t *testing.T) {
	h := newHarness(t)
	h.cfg.Types = []string{TypeWorkload}
	c, err := New(h.cfg, NewStore())
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	s := h.ads.nextStream(t)
	if r := s.next(t); r.GetTypeUrl() != TypeWorkload {
		t.Fatalf("subscribed to %q", r.GetTypeUrl())
	}
	s.out <- resp(TypeService, "1", nil, svcRes(svc("ns", "h", nil)))
	expectACK(t, s, TypeService, "1", true, "not subscribed")
	s.out <- resp(TypeWorkload, "2", nil)
	expectACK(t, s, TypeWorkload, "2", false)
	if !c.Synced() || c.Store().Load().Len(TypeService) != 0 {
		t.Error("want Synced with no service")
	}
}

// The wait between attempts doubles from Initial to Max, and restarts after a stream that
// worked.
func TestClientBackoff(t *testing.T) {
	h := newHarness(t)
	h.cfg.Backoff = Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	h.ads.refuse.Store(true)
	c, err := New(h.cfg, NewStore())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var waits []time.Duration
	c.randN = func(n int64) int64 { return n - 1 } // no jitter: the longest wait
	c.sleep = func(ctx context.Context, d time.Duration) bool {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err() == nil
	}
	got := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), waits...)
	}
	run(t, c)
	ms := time.Millisecond
	testutil.Eventually(t, 10*time.Second, "five attempts", func() bool { return len(got()) >= 5 })
	if d := cmp.Diff([]time.Duration{10 * ms, 20 * ms, 40 * ms, 50 * ms, 50 * ms}, got()[:5]); d != "" {
		t.Errorf("waits (-want +got):\n%s", d)
	}
	h.ads.refuse.Store(false)
	s := h.ads.nextStream(t)
	expectSubscriptions(t, s, h.cfg.Node)
	s.out <- resp(TypeWorkload, "1", nil)
	expectACK(t, s, TypeWorkload, "1", false)
	n := len(got())
	h.ads.refuse.Store(true)
	s.end <- status.Error(codes.Unavailable, "gone")
	testutil.Eventually(t, 10*time.Second, "an attempt after the drop", func() bool { return len(got()) > n })
	if w := got()[n]; w != 10*ms {
		t.Errorf("first wait after a working stream = %v, want Initial", w)
	}
}

func TestJitter(t *testing.T) {
	d := 100 * time.Millisecond
	if got := jitter(d, func(int64) int64 { return 0 }); got != d/2 {
		t.Errorf("least jitter = %v, want %v", got, d/2)
	}
	if got := jitter(d, func(n int64) int64 { return n - 1 }); got != d {
		t.Errorf("most jitter = %v, want %v", got, d)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := Default()
	valid.Addr, valid.TokenFile, valid.Node = "istiod-lite.istio-system.svc:15012", "/var/run/secrets/tokens/istio-token", "n"
	valid.TLS = newHarness(t).cfg.TLS
	if err := valid.Validate(); err != nil {
		t.Fatalf("Default with the caller's fields: %v", err)
	}
	bad := Config{Types: []string{TypeWorkload, TypeWorkload, "type.googleapis.com/x"}, Backoff: Backoff{Initial: -1, Max: -2}}
	err := bad.Validate()
	if err == nil {
		t.Fatal("an empty config is valid")
	}
	for _, want := range []string{"Addr", "TLS", "TokenFile", "Node", "listed twice", "unknown type", "Backoff.Initial", "Backoff.Max", "MaxRecvMsgSize", "Log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate does not report %s: %v", want, err)
		}
	}
	if _, err := New(bad, NewStore()); err == nil {
		t.Error("New accepted an invalid config")
	}
}

// The type URLs agree with the messages' descriptors.
func TestTypeURLs(t *testing.T) {
	for typ, m := range map[string]proto.Message{
		TypeWorkload: &workloadv1.Workload{}, TypeService: &workloadv1.Service{},
		TypeAuthorization: &workloadv1.Authorization{}, TypeTrustBundle: &cav1.TrustBundle{},
	} {
		if got := "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()); got != typ {
			t.Errorf("%s: descriptor gives %s", typ, got)
		}
	}
}
