package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambient-mesh/ambient/api/identity"
	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

const svcKey = "shop/echo.shop.svc.cluster.local"

// backend starts an HTTP server on addr (a loopback address of its own) that names itself in
// each answer, and returns it as a workload outside the mesh (reached in plain TCP) serving the
// Service's port 80.
func backend(t testing.TB, name, addr string, status int) *workloadv1.Workload {
	return backendFunc(t, name, addr, func(http.ResponseWriter, *http.Request) int { return status })
}

// backendFunc is backend with the status of each answer chosen by fn (which may block).
func backendFunc(t testing.TB, name, addr string, fn func(http.ResponseWriter, *http.Request) int) *workloadv1.Workload {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatalf("loopback address %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := fn(w, r)
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"pod": name, "headers": r.Header, "proto": r.Proto})
		w.Header().Set("Grpc-Status", "0")
	}))
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	ap := netip.MustParseAddrPort(ln.Addr().String())
	return &workloadv1.Workload{Uid: name, Name: name, Namespace: "shop", ServiceAccount: name, TrustDomain: "cluster.local",
		Addresses: [][]byte{ap.Addr().AsSlice()}, Status: workloadv1.WorkloadStatus_HEALTHY,
		Services: map[string]*workloadv1.PortList{svcKey: {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: uint32(ap.Port())}}}}}
}

// harness is a proxy whose configuration holds svc, its endpoints and routes, with an HTTP
// client whose every connection is a new tunnel into the proxy.
type harness struct {
	p     *Proxy
	tun   *tunnel
	hc    *http.Client
	h2c   *http.Client // cleartext HTTP/2, as gRPC clients speak
	conns atomic.Int32
}

func newHarness(t testing.TB, routes *routev1.ServiceRoutes, eps ...*workloadv1.Workload) *harness {
	t.Helper()
	store := xdsclient.NewStore()
	svc := &workloadv1.Service{Name: "echo", Namespace: "shop", Hostname: "echo.shop.svc.cluster.local",
		Addresses: [][]byte{netip.MustParseAddr("10.96.0.10").AsSlice()}, Ports: []*workloadv1.Port{{ServicePort: 80}},
		Waypoint: &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Hostname{
			Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "wp.shop.svc.cluster.local"}}}}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(store.Put(xdsclient.TypeService, map[string]proto.Message{svcKey: svc}))
	ws := map[string]proto.Message{}
	for _, w := range eps {
		ws[w.Uid] = w
	}
	must(store.Put(xdsclient.TypeWorkload, ws))
	if routes != nil {
		routes.Namespace, routes.Hostname = "shop", "echo.shop.svc.cluster.local"
		must(store.Put(xdsclient.TypeServiceRoutes, map[string]proto.Message{svcKey: routes}))
	}
	p := New(Deps{Store: store, Self: identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "wp"},
		Gateway: "shop/wp", Metrics: nil})
	t.Cleanup(p.Close)
	h := &harness{p: p}
	tun := &tunnel{svc: svc, key: svcKey, addr: netip.MustParseAddrPort("10.96.0.10:80"), port: 80, peer: identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "client"}}
	h.tun = tun
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		h.conns.Add(1)
		client, server := net.Pipe()
		go p.serveHTTP(ctx, newSoftDeadlines(resetOnDeadline{server}), tun) // as ServeHBONE does, on a conn that breaks as a tunnel does
		return client, nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	h.hc = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	tr2 := &http.Transport{DialContext: tr.DialContext, Protocols: &h2c}
	t.Cleanup(tr2.CloseIdleConnections)
	h.h2c = &http.Client{Transport: tr2}
	return h
}

type reply struct {
	Pod     string              `json:"pod"`
	Headers map[string][]string `json:"headers"`
}

func (h *harness) get(t *testing.T, path string, header ...string) (int, reply, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://echo.shop"+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", path, err)
	}
	var r reply
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("GET %s: %q: %v", path, b, err)
		}
	}
	return resp.StatusCode, r, resp.Header
}

func TestKeepAliveAndDefaultRoute(t *testing.T) {
	h := newHarness(t, nil, backend(t, "a", "127.0.0.1", 200))
	for i := range 200 {
		if code, r, _ := h.get(t, "/"); code != 200 || r.Pod != "a" {
			t.Fatalf("request %d: %d from %q", i, code, r.Pod)
		}
	}
	if n := h.conns.Load(); n != 1 {
		t.Errorf("200 sequential requests took %d connections, want 1 (keep-alive)", n)
	}
}

func TestRoutesCanarySplitRetry(t *testing.T) {
	v1, v2 := backend(t, "v1", "127.0.0.2", 200), backend(t, "v2", "127.0.0.3", 200)
	broken := backend(t, "broken", "127.0.0.4", 503)
	// v1 and v2 serve echo-v1 and echo-v2 too; broken only "flaky" with v1.
	const k1, k2, kf = "shop/echo-v1.shop.svc.cluster.local", "shop/echo-v2.shop.svc.cluster.local", "shop/flaky.shop.svc.cluster.local"
	v1.Services[k1], v2.Services[k2], v1.Services[kf] = v1.Services[svcKey], v2.Services[svcKey], v1.Services[svcKey]
	broken.Services = map[string]*workloadv1.PortList{kf: broken.Services[svcKey]}
	rs := &routev1.ServiceRoutes{Rules: []*routev1.Rule{
		{Route: "HTTPRoute/shop/echo", Match: &routev1.Match{Headers: []*routev1.HeaderMatch{{Name: "x-canary", Value: "true"}}},
			Backends: []*routev1.Backend{{Service: k2, Port: 80, Weight: 1}}},
		{Route: "HTTPRoute/shop/echo", Match: &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/flaky"}},
			Backends: []*routev1.Backend{{Service: kf, Port: 80, Weight: 1}}, Retry: &routev1.Retry{Codes: []uint32{503}, Attempts: 2}},
		{Route: "HTTPRoute/shop/echo", Match: &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/old"}},
			Filters: []*routev1.Filter{{Kind: &routev1.Filter_Redirect{Redirect: &routev1.Redirect{
				Path: &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: "/new"}}, StatusCode: 301}}}}},
		{Route: "HTTPRoute/shop/echo",
			Filters: []*routev1.Filter{{Kind: &routev1.Filter_RequestHeaders{RequestHeaders: &routev1.HeaderModifier{
				Add: []*routev1.Header{{Name: "x-routed-by", Value: "waypoint"}}}}}},
			Backends: []*routev1.Backend{{Service: k1, Port: 80, Weight: 90}, {Service: k2, Port: 80, Weight: 10}}},
	}}
	h := newHarness(t, rs, v1, v2, broken)
	for i := range 20 {
		if _, r, _ := h.get(t, "/", "X-Canary", "true"); r.Pod != "v2" {
			t.Fatalf("canary %d went to %q", i, r.Pod)
		}
	}
	counts := map[string]int{}
	for i := range 1000 {
		code, r, _ := h.get(t, "/split")
		if code != 200 || len(r.Headers["X-Routed-By"]) != 1 {
			t.Fatalf("split %d: %d, headers %v", i, code, r.Headers)
		}
		counts[r.Pod]++
	}
	if counts["v2"] < 50 || counts["v2"] > 150 {
		t.Errorf("split %v, want v2 at 10%% ± 5%%", counts)
	}
	for i := range 50 {
		if code, r, _ := h.get(t, "/flaky"); code != 200 || r.Pod != "v1" {
			t.Fatalf("flaky %d: %d from %q; want the retry to hide the broken endpoint", i, code, r.Pod)
		}
	}
	if code, _, hdr := h.get(t, "/old/x?q=1"); code != 301 || hdr.Get("Location") != "http://echo.shop/new/x?q=1" {
		t.Errorf("redirect: %d to %q", code, hdr.Get("Location"))
	}
	if n := h.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (keep-alive)", n)
	}
}

// TestH2C: cleartext HTTP/2 in (sniffed by its preface) goes out as HTTP/2, and trailers (gRPC's
// status) come back.
func TestH2C(t *testing.T) {
	h := newHarness(t, nil, backend(t, "a", "127.0.0.5", 200))
	for i := range 20 {
		resp, err := h.h2c.Get("http://echo.shop/")
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Proto string }
		err = json.NewDecoder(resp.Body).Decode(&r)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.ProtoMajor != 2 || r.Proto != "HTTP/2.0" || resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("request %d: %s in, %q upstream, trailer %v, %v", i, resp.Proto, r.Proto, resp.Trailer, err)
		}
	}
	if n := h.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestPolicyDeniesByPath: a DENY on a path answers 403 before any route; other paths go on.
func TestPolicyDeniesByPath(t *testing.T) {
	rs := &routev1.ServiceRoutes{Policies: []*routev1.Policy{{Name: "no-admin", Namespace: "shop", Action: routev1.Policy_DENY,
		Rules: []*routev1.PolicyRule{{To: []*routev1.Operation{{Paths: []string{"/admin*"}}}}}}}}
	h := newHarness(t, rs, backend(t, "a", "127.0.0.6", 200))
	if code, _, _ := h.get(t, "/admin/users"); code != http.StatusForbidden {
		t.Errorf("/admin/users: %d, want 403", code)
	}
	if code, r, _ := h.get(t, "/public"); code != 200 || r.Pod != "a" {
		t.Errorf("/public: %d from %q, want 200", code, r.Pod)
	}
}

// TestConnectionPoolOverflow: with http2MaxRequests 1 and no pending requests allowed, a second
// request while one is in flight is answered 503 at once.
func TestConnectionPoolOverflow(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	slow := backendFunc(t, "slow", "127.0.0.7", func(_ http.ResponseWriter, r *http.Request) int {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		return 200
	})
	h := newHarness(t, &routev1.ServiceRoutes{TrafficPolicy: &routev1.TrafficPolicy{Http2MaxRequests: 1}}, slow)
	done := make(chan int)
	go func() {
		code, _, _ := h.get(t, "/slow")
		done <- code
	}()
	<-entered
	if code, _, _ := h.get(t, "/fast"); code != http.StatusServiceUnavailable {
		t.Errorf("a request over the pool's bound: %d, want 503", code)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("the request in flight: %d", code)
	}
	if code, _, _ := h.get(t, "/fast"); code != 200 {
		t.Errorf("after the slot was freed: %d", code)
	}
}

// TestOutlierEjection: an endpoint answering 5xx in a row is ejected and gets no more requests.
func TestOutlierEjection(t *testing.T) {
	good, bad := backend(t, "good", "127.0.0.8", 200), backend(t, "bad", "127.0.0.9", 503)
	h := newHarness(t, &routev1.ServiceRoutes{TrafficPolicy: &routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_ROUND_ROBIN,
		OutlierDetection: &routev1.OutlierDetection{Consecutive_5XxErrors: 2, BaseEjectionTimeMs: 60000, MaxEjectionPercent: 50}}}, good, bad)
	fails := 0
	for range 40 {
		if code, _, _ := h.get(t, "/"); code != 200 {
			fails++
		}
	}
	if fails != 2 {
		t.Errorf("%d requests failed; want 2, then the bad endpoint ejected", fails)
	}
}

// TestUnmatchedRequestOfARoutedService404: once a Service has routes, a request none of them
// matches is answered 404, not sent to the Service.
func TestUnmatchedRequestOfARoutedService404(t *testing.T) {
	rs := &routev1.ServiceRoutes{Rules: []*routev1.Rule{{Route: "HTTPRoute/shop/only-v2",
		Match:    &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/v2"}},
		Backends: []*routev1.Backend{{Service: svcKey, Port: 80, Weight: 1}}}}}
	h := newHarness(t, rs, backend(t, "a", "127.0.0.12", 200))
	if code, _, _ := h.get(t, "/v2/x"); code != 200 {
		t.Errorf("/v2/x: %d, want 200", code)
	}
	if code, _, _ := h.get(t, "/other"); code != http.StatusNotFound {
		t.Errorf("/other: %d, want 404", code)
	}
}

// TestCORS: a CORS preflight is answered by the waypoint itself, 200, with the response header
// modifiers of the filters before the CORS filter, and never reaches the backend; an actual
// request does, and its answer gets Access-Control-Allow-Origin when its origin is allowed.
func TestCORS(t *testing.T) {
	var forwarded atomic.Int32
	be := backendFunc(t, "a", "127.0.0.14", func(_ http.ResponseWriter, r *http.Request) int {
		if r.Method == http.MethodOptions {
			forwarded.Add(1)
		}
		return 200
	})
	rs := &routev1.ServiceRoutes{Rules: []*routev1.Rule{{Route: "HTTPRoute/shop/cors",
		Filters: []*routev1.Filter{
			{Kind: &routev1.Filter_ResponseHeaders{ResponseHeaders: &routev1.HeaderModifier{
				Set: []*routev1.Header{{Name: "x-route", Value: "cors"}}}}},
			{Kind: &routev1.Filter_Cors{Cors: &routev1.Cors{AllowOrigins: []string{"https://*.foo.com"}, AllowMethods: []string{"GET", "PUT"},
				AllowHeaders: []string{"x-a"}, ExposeHeaders: []string{"x-b"}, AllowCredentials: true, MaxAgeSeconds: 60}}}},
		Backends: []*routev1.Backend{{Service: svcKey, Port: 80, Weight: 1}}}}}
	h := newHarness(t, rs, be)
	options := func(header ...string) (int, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, "http://echo.shop/api", nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := h.hc.Do(req)
		if err != nil {
			t.Fatalf("OPTIONS: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	want := func(what string, hdr http.Header, kv ...string) {
		t.Helper()
		for i := 0; i+1 < len(kv); i += 2 {
			if got := hdr.Get(kv[i]); got != kv[i+1] {
				t.Errorf("%s: %s %q, want %q", what, kv[i], got, kv[i+1])
			}
		}
	}

	code, hdr := options("Origin", "https://app.foo.com", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "x-a")
	if code != 200 {
		t.Errorf("preflight: %d, want 200", code)
	}
	want("preflight", hdr, "Access-Control-Allow-Origin", "https://app.foo.com", "Access-Control-Allow-Methods", "GET, PUT",
		"Access-Control-Allow-Headers", "x-a", "Access-Control-Expose-Headers", "x-b", "Access-Control-Max-Age", "60",
		"Access-Control-Allow-Credentials", "true", "Vary", "Origin", "X-Route", "cors")
	code, hdr = options("Origin", "https://foo.com", "Access-Control-Request-Method", "PUT")
	if code != 200 {
		t.Errorf("preflight from an origin not allowed: %d, want 200", code)
	}
	want("preflight from an origin not allowed", hdr, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Methods", "",
		"Access-Control-Allow-Credentials", "")
	if n := forwarded.Load(); n != 0 {
		t.Errorf("the backend saw %d preflights, want 0", n)
	}

	code, r, hdr := h.get(t, "/api", "Origin", "https://app.foo.com")
	if code != 200 || r.Pod != "a" {
		t.Errorf("GET with an allowed Origin: %d from %q", code, r.Pod)
	}
	want("GET with an allowed Origin", hdr, "Access-Control-Allow-Origin", "https://app.foo.com",
		"Access-Control-Allow-Credentials", "true", "Access-Control-Expose-Headers", "x-b", "Access-Control-Allow-Methods", "",
		"Vary", "Origin", "X-Route", "cors")
	code, _, hdr = h.get(t, "/api", "Origin", "http://app.foo.com")
	if code != 200 {
		t.Errorf("GET with an Origin not allowed: %d", code)
	}
	want("GET with an Origin not allowed", hdr, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Credentials", "")
	code, _, hdr = h.get(t, "/api")
	if code != 200 {
		t.Errorf("GET without Origin: %d", code)
	}
	want("GET without Origin", hdr, "Access-Control-Allow-Origin", "", "Vary", "", "X-Route", "cors")

	// OPTIONS without Access-Control-Request-Method is not a preflight: the backend answers it.
	if code, _ := options("Origin", "https://app.foo.com"); code != 200 || forwarded.Load() != 1 {
		t.Errorf("an actual OPTIONS request: %d, %d reached the backend, want 1", code, forwarded.Load())
	}
}

// halfCloser gives a pipe the CloseWrite a tunnel has.
type halfCloser struct{ net.Conn }

func (halfCloser) CloseWrite() error { return nil }

// TestTCPPolicy: plain TCP through the waypoint gets the L4 part of the Service's policies.
func TestTCPPolicy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.13:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	acceptedCh := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			acceptedCh <- struct{}{}
			c.Close()
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	w := &workloadv1.Workload{Uid: "db", Name: "db", Namespace: "shop", ServiceAccount: "db", TrustDomain: "cluster.local",
		Addresses: [][]byte{ap.Addr().AsSlice()}, Status: workloadv1.WorkloadStatus_HEALTHY,
		Services: map[string]*workloadv1.PortList{svcKey: {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: uint32(ap.Port())}}}}}
	for _, tc := range []struct {
		name    string
		action  routev1.Policy_Action
		connect bool
	}{{"denied namespace", routev1.Policy_DENY, false}, {"allowed namespace", routev1.Policy_ALLOW, true}} {
		rs := &routev1.ServiceRoutes{Policies: []*routev1.Policy{{Name: "ns", Namespace: "shop", Action: tc.action,
			Rules: []*routev1.PolicyRule{{From: []*routev1.Source{{Namespaces: []string{"shop"}}}}}}}}
		h := newHarness(t, rs, w)
		before := accepted.Load()
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			h.p.serveTCP(context.Background(), &bufConn{Conn: halfCloser{server}, r: bufio.NewReader(server)}, h.tun)
			close(done)
		}()
		if tc.connect {
			<-acceptedCh // the stream reached the backend
		} else {
			<-done // refused without connecting
		}
		client.Close()
		<-done
		if got := accepted.Load() > before; got != tc.connect {
			t.Errorf("%s: connected upstream %v, want %v", tc.name, got, tc.connect)
		}
	}
}
