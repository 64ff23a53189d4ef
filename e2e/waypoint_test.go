//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/waypoint/proxy"
)

// TestWaypointL7 binds a namespace to its waypoint (a Gateway of class istio-waypoint, deployed
// by istiod-lite and run from the ambient/waypoint image) and sends HTTP from an enrolled pod to
// its Services, as an application does (the connection is captured and carried by ztunnel to the
// waypoint over HBONE). It checks:
//   - an HTTPRoute's header canary, a 90/10 split within ±5% over 1000 requests, a redirect, a
//     request header added, sticky sessions, and CORS (a preflight answered by the waypoint);
//   - the waypoint's span in a client's trace, exported over OTLP;
//   - a DENY by path, a JWT required on one path;
//   - a retry that hides a failing endpoint, an endpoint ejected by outlier detection and back;
//   - WebSocket and gRPC;
//   - traffic addressed to a pod bound to a waypoint of its own;
//   - Accepted route status, the waypoint's request metrics, and that a pod of a bound Service is
//     not reachable around the waypoint.
func TestWaypointL7(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cs := client(t)
	// An OpenTelemetry collector on node-1's address, for the waypoint's spans. Sampling 0: only
	// the traces clients sample are recorded.
	collector, err := lab.ListenInNetns(lab.NodeAt(1).Netns, net.JoinHostPort(lab.NodeAt(1).IP.String(), "14317"))
	if err != nil {
		t.Fatal(err)
	}
	sink := testutil.ServeOTLP(collector)
	t.Cleanup(sink.Stop)
	installMesh(t, cs, "--waypoint-tracing-endpoint="+collector.Addr().String(), "--waypoint-tracing-sampling=0")
	ns := waypointNamespace(t, cs, "l7", "testdata/waypoint.yaml", 6) // wp, wp-pods, echo-v1, echo-v2, broken, client
	eventually(t, 30*time.Second, "every pod enabled", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		wps, _ := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name in (wp, wp-pods)"})
		for i := range wps.Items {
			t.Logf("waypoint %s log:\n%s", wps.Items[i].Name, containerLog(t, &wps.Items[i], "waypoint"))
		}
		zts, _ := cs.CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=ztunnel"})
		for i := range zts.Items {
			var lines []string
			for _, l := range strings.Split(containerLog(t, &zts.Items[i], "ztunnel"), "\n") {
				if strings.Contains(l, ns) {
					lines = append(lines, l)
				}
			}
			t.Logf("ztunnel %s, the last lines about %s:\n%s", zts.Items[i].Name, ns, strings.Join(lines[max(0, len(lines)-8):], "\n"))
		}
	})
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"wp"}}}`, mesh.LabelUseWaypoint)
	if _, err := cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, svc := range []string{"echo", "flaky", "raw"} {
		eventually(t, 30*time.Second, "Service "+svc+" bound to the waypoint", func() bool {
			return kubectl(t, "-n", ns, "get", "service", svc, "-o",
				`jsonpath={.status.conditions[?(@.type=="istio.io/WaypointBound")].status}`) == "True"
		})
	}
	clientBin := filepath.Join(labCfg.BinDir, "client")
	// requestsWith runs the client program in the client pod (its connections captured like any
	// application's): n requests of url with the client's flags and headers, one result each.
	requestsWith := func(flags []string, n int, url string, headers ...string) []images.Result {
		t.Helper()
		args := append([]string{"-timeout", "5s"}, flags...)
		for _, h := range headers {
			args = append(args, "-header", h)
		}
		out, err := lab.Exec(ctx, labCfg, ns, "client", append(append([]string{clientBin}, args...), "requests", strconv.Itoa(n), url)...)
		if err != nil {
			t.Fatalf("client requests %s: %v: %s", url, err, out)
		}
		var rs []images.Result
		dec := json.NewDecoder(strings.NewReader(out))
		for {
			var r images.Result
			if err := dec.Decode(&r); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("client output %q: %v", out, err)
			}
			rs = append(rs, r)
		}
		if len(rs) != n {
			t.Fatalf("client requests %s: %d results, want %d", url, len(rs), n)
		}
		return rs
	}
	// requests: n GETs of url with headers.
	requests := func(n int, url string, headers ...string) []images.Result {
		t.Helper()
		return requestsWith(nil, n, url, headers...)
	}
	echo, flaky := "http://echo."+ns, "http://flaky."+ns

	// Through the waypoint without a route: the Service's own endpoints answer.
	eventually(t, 60*time.Second, "a request through the waypoint", func() bool {
		return requests(1, echo+"/")[0].Code == 200
	})

	// Ports that declare no protocol are sniffed. A short first message whose client then waits
	// for the answer is TCP at once; a client that waits for the server to speak first is passed
	// through as TCP after the detection timeout, and the waypoint says why, naming the Service.
	if out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "tcp-line", "raw."+ns+":9090", "hi"); err != nil || out != "hi\n" {
		t.Errorf("a short client-first exchange through the waypoint = %q, %v", out, err)
	}
	// Both server-first exchanges at once, so that the suite waits out one timeout: after the
	// greeting, a command line is relayed, and a request line ends the tunnel (passed as TCP it
	// would skip the port's L7 configuration).
	greetTimeout := (proxy.DefaultSniffTimeout + 10*time.Second).String()
	var greeted sync.WaitGroup
	var cmdOut, httpOut string
	var cmdErr, httpErr error
	greeted.Go(func() {
		cmdOut, cmdErr = lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", greetTimeout, "tcp-greet", "raw."+ns+":9092", "HELO client")
	})
	greeted.Go(func() {
		httpOut, httpErr = lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", greetTimeout, "tcp-greet", "raw."+ns+":9092", "GET /admin HTTP/1.1")
	})
	greeted.Wait()
	if cmdErr != nil || cmdOut != "hello from echo-v1\nHELO client\r\n" {
		t.Errorf("a server-first exchange through the waypoint = %q, %v", cmdOut, cmdErr)
	}
	if httpErr == nil || !strings.HasPrefix(httpOut, "hello from echo-v1\n") || strings.Contains(httpOut, "GET /admin") {
		t.Errorf("an HTTP request sent after detection timed out = %q, %v; want the greeting, then the tunnel closed", httpOut, httpErr)
	}
	wps, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name=wp"})
	if err != nil || len(wps.Items) != 1 {
		t.Fatalf("waypoint pods: %v, %v", wps, err)
	}
	if log := containerLog(t, &wps.Items[0], "waypoint"); !strings.Contains(log, "protocol detection timed out") || !strings.Contains(log, ns+"/raw.") {
		t.Errorf("the waypoint's log does not name the Service whose detection timed out:\n%s", log)
	}

	routes, err := os.ReadFile("testdata/waypoint-routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ns, routes)
	for _, r := range []string{"echo", "flaky"} {
		eventually(t, 60*time.Second, "HTTPRoute "+r+" Accepted", func() bool {
			return kubectl(t, "-n", ns, "get", "httproute", r, "-o",
				`jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`) == "True"
		})
	}

	// Header canary: every request with the header goes to v2.
	eventually(t, 60*time.Second, "the canary rule applied", func() bool {
		return requests(1, echo+"/", "X-Canary: true")[0].Pod == "echo-v2"
	})
	for i, r := range requests(20, echo+"/", "X-Canary: true") {
		if r.Code != 200 || r.Pod != "echo-v2" {
			t.Fatalf("canary request %d: %+v; want 200 from echo-v2", i, r)
		}
	}

	// Tracing: a request in a trace the client sampled gets a waypoint span, exported over OTLP,
	// whose parent is the client's span and which is the parent the backend sees.
	traceID, clientSpan := randomHex(t, 16), randomHex(t, 8)
	traced := requests(1, echo+"/traced", "Traceparent: 00-"+traceID+"-"+clientSpan+"-01")[0]
	eventually(t, 30*time.Second, "the waypoint's span at the collector", func() bool { return len(sink.Trace(traceID)) > 0 })
	if spans := sink.Trace(traceID); len(spans) != 1 {
		t.Errorf("trace %s has %d spans at the collector, want the waypoint's: %+v", traceID, len(spans), spans)
	} else {
		sp := spans[0]
		if sp.ParentSpanID != clientSpan || sp.Service != "wp."+ns || sp.Name != "echo."+ns+".svc.cluster.local:80/*" ||
			sp.Attributes["url.path"] != "/traced" || sp.Attributes["http.response.status_code"] != "200" {
			t.Errorf("waypoint span %+v; want child of %s, service wp.%s, path /traced, status 200", sp, clientSpan, ns)
		}
		want := "00-" + traceID + "-" + sp.SpanID + "-01"
		if got := traced.Headers["Traceparent"]; len(got) != 1 || got[0] != want {
			t.Errorf("backend got traceparent %q, want %q (the waypoint's span as parent)", got, want)
		}
	}

	// 90/10 split, with the rule's request header added.
	counts := map[string]int{}
	for i, r := range requests(1000, echo+"/split") {
		if r.Code != 200 {
			t.Fatalf("split request %d: %+v", i, r)
		}
		if got := r.Headers["X-Routed-By"]; len(got) != 1 || got[0] != "waypoint" {
			t.Fatalf("split request %d: X-Routed-By = %q, want the route's header", i, got)
		}
		counts[r.Pod]++
	}
	if v2 := counts["echo-v2"]; v2 < 50 || v2 > 150 || counts["echo-v1"]+v2 != 1000 {
		t.Errorf("1000 requests split %v; want echo-v2 at 10%% ± 5%%", counts)
	}
	t.Logf("90/10 split over 1000 requests: %v", counts)

	// Redirect, answered by the waypoint itself.
	if r := requests(1, echo+"/old/page?q=1")[0]; r.Code != 301 || !strings.HasSuffix(r.Location, "/new/page?q=1") {
		t.Errorf("redirect = %+v; want 301 to /new/page?q=1", r)
	}

	// CORS: the waypoint answers a preflight from an allowed origin itself, and adds the allowed
	// origin to actual responses; another origin gets no CORS headers.
	const origin = "https://app.example.com"
	pre := requestsWith([]string{"-method", "OPTIONS", "-response-headers"}, 1, echo+"/cors/items",
		"Origin: "+origin, "Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: x-token")[0]
	if h := http.Header(pre.ResponseHeaders); pre.Code != 200 || pre.Pod != "" || h.Get("Access-Control-Allow-Origin") != origin ||
		h.Get("Access-Control-Allow-Methods") != "GET, PUT" || h.Get("Access-Control-Max-Age") != "600" ||
		h.Get("Access-Control-Allow-Credentials") != "true" || !strings.EqualFold(h.Get("Access-Control-Allow-Headers"), "x-token") {
		t.Errorf("CORS preflight: %+v; want 200 from the waypoint with the route's CORS headers", pre)
	}
	for _, tc := range []struct{ origin, want string }{{origin, origin}, {"https://evil.test", ""}} {
		r := requestsWith([]string{"-response-headers"}, 1, echo+"/cors/items", "Origin: "+tc.origin)[0]
		if got := http.Header(r.ResponseHeaders).Get("Access-Control-Allow-Origin"); r.Code != 200 || r.Pod != "echo-v1" || got != tc.want {
			t.Errorf("CORS GET from %s: %d from %q, Access-Control-Allow-Origin %q; want 200 from echo-v1 with %q", tc.origin, r.Code, r.Pod, got, tc.want)
		}
	}

	// Session persistence: a 50/50 split, but requests that send the session cookie back stay
	// with the pod that answered the first.
	first := requestsWith([]string{"-response-headers"}, 1, echo+"/sticky")[0]
	cookies := (&http.Response{Header: http.Header(first.ResponseHeaders)}).Cookies()
	if first.Code != 200 || len(cookies) != 1 || cookies[0].Name != "sticky" {
		t.Fatalf("first request of a session: %+v; want 200 with the session cookie", first)
	}
	for i, r := range requestsWith(nil, 20, echo+"/sticky", "Cookie: sticky="+cookies[0].Value) {
		if r.Code != 200 || r.Pod != first.Pod {
			t.Fatalf("request %d of the session: %+v; want 200 from %s", i, r, first.Pod)
		}
	}

	// A DENY by path, enforced by the waypoint (403), attached as Istio reports it.
	eventually(t, 30*time.Second, "AuthorizationPolicy no-admin WaypointAccepted", func() bool {
		return kubectl(t, "-n", ns, "get", "authorizationpolicy", "no-admin", "-o",
			`jsonpath={.status.conditions[?(@.type=="WaypointAccepted")].status}`) == "True"
	})
	eventually(t, 30*time.Second, "/admin denied", func() bool { return requests(1, echo+"/admin/users")[0].Code == 403 })
	if r := requests(1, echo+"/public")[0]; r.Code != 200 {
		t.Errorf("/public with the DENY policy in place: %+v, want 200", r)
	}

	// The broken pod always answers 503; retries on 503 hide it.
	for i, r := range requests(40, flaky+"/") {
		if r.Code != 200 {
			t.Fatalf("flaky request %d: %+v; want the retry to hide the broken pod", i, r)
		}
	}

	// WebSocket (an HTTP/1.1 Upgrade) and gRPC (HTTP/2 with trailers, by the port's name)
	// through the waypoint.
	if out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "ws", "ws://echo."+ns+"/ws", "over websocket"); err != nil || out != "over websocket" {
		t.Errorf("WebSocket through the waypoint: %q, %v", out, err)
	}
	if out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "grpc-health", "echo."+ns+":7070"); err != nil || strings.TrimSpace(out) != "SERVING" {
		t.Errorf("gRPC through the waypoint: %q, %v", out, err)
	}

	// Outlier detection: the broken pod is ejected after two 503s in a row, and comes back once
	// its ejection time is up.
	eject := "http://eject." + ns
	fails := 0
	for _, r := range requests(20, eject+"/") {
		if r.Code != 200 {
			fails++
		}
	}
	if fails > 2 {
		t.Errorf("%d of 20 requests failed; want at most 2 before the broken pod is ejected", fails)
	}
	eventually(t, 20*time.Second, "the ejected pod back after its ejection time", func() bool {
		return slices.ContainsFunc(requests(4, eject+"/"), func(r images.Result) bool { return r.Code == 503 })
	})

	// RequestAuthentication plus a DENY of requests without a request principal on /secure: a
	// token required on one path.
	sign, jwks := jwtSigner(t)
	apply(t, ns, []byte(fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  jwtRules: [{issuer: "https://issuer.example", jwks: %q}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}], to: [{operation: {paths: ["/secure*"]}}]}]
`, jwks)))
	good := "Authorization: Bearer " + sign("https://issuer.example", time.Now().Add(time.Hour))
	eventually(t, 30*time.Second, "RequestAuthentication jwt WaypointAccepted", func() bool {
		return kubectl(t, "-n", ns, "get", "requestauthentication", "jwt", "-o",
			`jsonpath={.status.conditions[?(@.type=="WaypointAccepted")].status}`) == "True"
	})
	eventually(t, 30*time.Second, "/secure needs a token", func() bool { return requests(1, echo+"/secure")[0].Code == 403 })
	for _, tc := range []struct {
		name, path, header string
		want               int
	}{
		{"valid token", "/secure", good, 200},
		{"token of another issuer", "/secure", "Authorization: Bearer " + sign("https://other.example", time.Now().Add(time.Hour)), 401},
		{"expired token", "/secure", "Authorization: Bearer " + sign("https://issuer.example", time.Now().Add(-time.Hour)), 401},
		{"no token elsewhere", "/public", "X-None: 1", 200},
	} {
		if r := requests(1, echo+tc.path, tc.header)[0]; r.Code != tc.want {
			t.Errorf("JWT, %s: %d, want %d", tc.name, r.Code, tc.want)
		}
	}

	// Around the waypoint: straight to a pod of a bound Service is refused by its ztunnel.
	v1, err := cs.CoreV1().Pods(ns).Get(ctx, "echo-v1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := requests(1, "http://"+v1.Status.PodIP+":8080/")[0]; r.Err == "" {
		t.Errorf("a request around the waypoint to echo-v1's pod IP got %+v; want it refused", r)
	}

	// Addressed to a pod bound to a waypoint of its own (istio.io/waypoint-for: workload): through
	// that waypoint, under the policies that target it.
	v2, err := cs.CoreV1().Pods(ns).Get(ctx, "echo-v2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the pod waypoint's DENY on /private", func() bool {
		return requests(1, "http://"+v2.Status.PodIP+":8080/private")[0].Code == 403
	})
	for i, r := range requests(10, "http://"+v2.Status.PodIP+":8080/") {
		if r.Code != 200 || r.Pod != "echo-v2" {
			t.Fatalf("request %d to echo-v2's pod IP: %+v; want 200 from echo-v2 through its waypoint", i, r)
		}
	}

	// The waypoint reports what it did, as Istio's waypoints do.
	wps, err = cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name=wp"})
	if err != nil || len(wps.Items) != 1 {
		t.Fatalf("waypoint pods: %v, %v", wps, err)
	}
	text := fetchMetrics(t, ctx, wps.Items[0].Status.PodIP)
	for _, want := range []string{`reporter="waypoint"`, `destination_workload="echo-v2"`, `response_code="200"`, `request_protocol="grpc"`,
		`source_principal="cluster.local/ns/` + ns + `/sa/default"`} {
		if !strings.Contains(text, "istio_requests_total{") || !strings.Contains(text, want) {
			t.Errorf("waypoint metrics lack istio_requests_total with %s", want)
		}
	}
	// Its access log names each request (lines go out in batches, at most a second late).
	eventually(t, 20*time.Second, "an access log line for a request to echo-v2 in the waypoint's log", func() bool {
		for _, line := range strings.Split(containerLog(t, &wps.Items[0], "waypoint"), "\n") {
			if strings.Contains(line, `"msg":"access"`) && strings.Contains(line, `"reporter":"waypoint"`) &&
				strings.Contains(line, `"dst_workload":"echo-v2"`) && strings.Contains(line, `"status":200`) {
				return true
			}
		}
		return false
	})
}

// fetchMetrics reads a component's Prometheus metrics from the first node's namespace.
func fetchMetrics(t testing.TB, ctx context.Context, podIP string) string {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return lab.DialInNetns(ctx, lab.NodeAt(1).Netns, addr)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", podIP, mesh.PortMetrics), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waypointNamespace makes an ambient namespace from manifest (a waypoint Gateway and pods, one
// of them the client) and waits until that many of its pods are ready (the client running) and the
// waypoint's Deployment has its pod.
func waypointNamespace(t testing.TB, cs kubernetes.Interface, prefix, manifest string, pods int) string {
	t.Helper()
	ns := newNamespace(t, cs, prefix)
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	b, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ns, b)
	eventually(t, 90*time.Second, "the waypoint and the pods of "+manifest+" ready", func() bool {
		list, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		ready := 0
		for i := range list.Items {
			p := &list.Items[i]
			if podReady(p) || p.Name == "client" && p.Status.Phase == corev1.PodRunning {
				ready++
			}
		}
		return ready == pods
	})
	return ns
}

// jwtSigner returns a function that signs tokens of an issuer with a fresh key, and the JWKS
// that holds its public half.
func jwtSigner(t testing.TB) (sign func(iss string, exp time.Time) string, jwks string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return func(iss string, exp time.Time) string {
		tok, err := josejwt.Signed(sg).Claims(josejwt.Claims{Issuer: iss, Subject: "alice", Expiry: josejwt.NewNumericDate(exp)}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}, string(b)
}

// randomHex returns n random bytes in hex (a trace or span id).
func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
