// End-to-end on loopback: the server listens on 127.0.0.1 (HTTP, HTTPS, gRPC, TCP on free
// ports), the client command runs with the argument vectors the conformance suite builds
// (conformance/utils/echo/pod.go makeRequest: `client URL [--method=M] [-H k:v]... [--count=N]`),
// and its stdout goes through the suite's own parser (suiteparse_test.go). The checks after
// parsing mirror the suite's compareRequest (status code, request headers compared
// case-insensitively with values joined by ",", absent headers, response headers, Hostname
// prefix); that function is unexported and in a file that needs a cluster, so it is restated
// here rather than run.

package echoadvanced

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

type testServer struct{ http, https, grpc, tcp string }

func startServer(t *testing.T) testServer {
	t.Helper()
	cfg := ServerConfig{ListenHost: "127.0.0.1", Version: "v1", Namespace: "gateway-conformance-mesh", Ports: []Port{
		{Protocol: ProtoHTTP}, {Protocol: ProtoHTTP, TLS: true}, {Protocol: ProtoGRPC}, {Protocol: ProtoTCP}}}
	s, err := StartServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return testServer{http: s.Addr(0), https: s.Addr(1), grpc: s.Addr(2), tcp: s.Addr(3)}
}

// runSuiteArgs runs the program as the lab would for `kubectl exec -- client ...` with the
// proposed multi-call resolution: <bin>/echo-advanced client ....
func runSuiteArgs(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := Main(ctx, append([]string{"/work/main/bin/echo-advanced"}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

// expect is what an http.ExpectedResponse of the suite asks of one response.
type expect struct {
	codes       []int
	grpc        bool
	reqHeaders  map[string]string
	absentReq   []string
	respHeaders map[string]string
	absentResp  []string
	backend     string // Hostname prefix
}

// check restates the suite's compareRequest.
func (e expect) check(r parsed) error {
	code, err := strconv.Atoi(r.Code)
	if err != nil {
		return fmt.Errorf("invalid status code %q: %v", r.Code, err)
	}
	want := slices.Clone(e.codes)
	if len(want) == 0 {
		want = []int{200}
	}
	if e.grpc {
		for i, c := range want {
			if c == 0 {
				want[i] = 200
			}
		}
	}
	if !slices.Contains(want, code) {
		return fmt.Errorf("status %d, want one of %v", code, want)
	}
	lower := map[string][]string{}
	for k, v := range r.RequestHeaders {
		lower[strings.ToLower(k)] = v
	}
	for k, v := range e.reqHeaders {
		got, ok := lower[strings.ToLower(k)]
		if !ok || strings.Join(got, ",") != v {
			return fmt.Errorf("request header %s = %q, want %q (headers %v)", k, got, v, r.RequestHeaders)
		}
	}
	for _, k := range e.absentReq {
		if v, ok := lower[strings.ToLower(k)]; ok {
			return fmt.Errorf("request header %s = %q, want none", k, v)
		}
	}
	rh := map[string]string{}
	for k, v := range r.ResponseHeaders {
		rh[strings.ToLower(k)] = strings.Join(v, ",")
	}
	for _, k := range e.absentResp {
		if v, ok := rh[strings.ToLower(k)]; ok {
			return fmt.Errorf("response header %s = %q, want none", k, v)
		}
	}
	for k, v := range e.respHeaders {
		if rh[strings.ToLower(k)] != v {
			return fmt.Errorf("response header %s = %q, want %q", k, rh[strings.ToLower(k)], v)
		}
	}
	if !strings.HasPrefix(r.Hostname, e.backend) {
		return fmt.Errorf("hostname %q, want prefix %q", r.Hostname, e.backend)
	}
	return nil
}

func TestHTTPThroughSuiteParser(t *testing.T) {
	s := startServer(t)
	me := hostname()
	if me == "" {
		t.Fatal("no host name to check against")
	}
	cases := []struct {
		name string
		args []string
		exp  expect
		more func(parsed) error
	}{
		{name: "basic", args: []string{"client", "http://" + s.http, "--method=GET"}, exp: expect{backend: me},
			more: func(p parsed) error {
				if p.Method != "GET" || p.URL != "/" || p.Host != s.http || p.Version != "v1" || p.Protocol != "HTTP/1.1" {
					return fmt.Errorf("method %q url %q host %q version %q proto %q", p.Method, p.URL, p.Host, p.Version, p.Protocol)
				}
				return nil
			}},
		{name: "request headers", args: []string{"client", "http://" + s.http + "/", "--method=GET", "-H", "version:one", "-H", "X-Multi:a", "-H", "x-multi:b"},
			exp: expect{reqHeaders: map[string]string{"version": "one", "x-multi": "a,b"}, absentReq: []string{"X-Header-Set"}, backend: me}},
		{name: "host header sets the authority", args: []string{"client", "http://" + s.http, "--method=GET", "-H", "Host:echo-v1"},
			exp: expect{absentReq: []string{"Host"}, backend: me},
			more: func(p parsed) error {
				if p.Host != "echo-v1" {
					return fmt.Errorf("Host %q, want echo-v1", p.Host)
				}
				return nil
			}},
		{name: "path and query sent as given", args: []string{"client", "http://" + s.http + "/path1?animal=whale", "--method=GET"},
			exp: expect{backend: me},
			more: func(p parsed) error {
				if p.URL != "/path1?animal=whale" {
					return fmt.Errorf("URL %q", p.URL)
				}
				return nil
			}},
		{name: "response headers", args: []string{"client", "http://" + s.http + "/?headers=X-Header-Set:v1", "--method=GET"},
			exp: expect{respHeaders: map[string]string{"X-Header-Set": "v1", "Content-Type": "application/text"}, absentResp: []string{"X-Other"}, backend: me}},
		{name: "status code", args: []string{"client", "http://" + s.http + "/?codes=503", "--method=GET"},
			exp: expect{codes: []int{503}, backend: me}},
		{name: "redirect not followed", args: []string{"client", "http://" + s.http + "/?codes=302&headers=Location:/elsewhere", "--method=GET"},
			exp: expect{codes: []int{302}, respHeaders: map[string]string{"Location": "/elsewhere"}}},
		{name: "redirect followed with -L", args: []string{"client", "http://" + s.http + "/?codes=302&headers=Location:/elsewhere", "-L"},
			exp: expect{codes: []int{200}, backend: me},
			more: func(p parsed) error {
				if p.URL != "/elsewhere" {
					return fmt.Errorf("URL %q after the redirect", p.URL)
				}
				return nil
			}},
		{name: "method", args: []string{"client", "http://" + s.http + "/x", "--method=POST"}, exp: expect{backend: me},
			more: func(p parsed) error {
				if p.Method != "POST" {
					return fmt.Errorf("method %q", p.Method)
				}
				return nil
			}},
		{name: "h2c", args: []string{"client", "http://" + s.http, "--http2"}, exp: expect{backend: me},
			more: func(p parsed) error {
				if p.Protocol != "HTTP/2.0" {
					return fmt.Errorf("proto %q", p.Protocol)
				}
				return nil
			}},
		{name: "https", args: []string{"client", "https://" + s.https + "/tls", "-H", "Host:echo"}, exp: expect{backend: me},
			more: func(p parsed) error {
				if p.Alpn != "http/1.1" || p.Protocol != "HTTP/1.1" || p.Host != "echo" {
					return fmt.Errorf("alpn %q proto %q host %q", p.Alpn, p.Protocol, p.Host)
				}
				return nil
			}},
		{name: "https h2", args: []string{"client", "https://" + s.https, "--http2"}, exp: expect{backend: me},
			more: func(p parsed) error {
				if p.Alpn != "h2" || p.Protocol != "HTTP/2.0" {
					return fmt.Errorf("alpn %q proto %q", p.Alpn, p.Protocol)
				}
				return nil
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runSuiteArgs(t, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			res := suiteParse(t, out, false)
			if err := tc.exp.check(res[0]); err != nil {
				t.Fatalf("%v\noutput:\n%s", err, out)
			}
			if tc.more != nil {
				if err := tc.more(res[0]); err != nil {
					t.Fatalf("%v\noutput:\n%s", err, out)
				}
			}
		})
	}
}

func TestGRPCThroughSuiteParser(t *testing.T) {
	s := startServer(t)
	// MeshGRPCRouteWeight: Request{Protocol: "grpc", Host: "echo:7070"} → `client grpc://echo:7070`.
	out, errOut, code := runSuiteArgs(t, "client", "grpc://"+s.grpc, "-H", "x-custom:yes", "-H", "Host:echo:7070")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	p := suiteParse(t, out, false)[0]
	exp := expect{grpc: true, codes: []int{0}, reqHeaders: map[string]string{"X-Custom": "yes"}, backend: hostname()}
	if err := exp.check(p); err != nil {
		t.Fatalf("%v\noutput:\n%s", err, out)
	}
	if p.Host != "echo:7070" || p.Version != "v1" || p.Protocol != "GRPC" {
		t.Fatalf("host %q version %q proto %q\noutput:\n%s", p.Host, p.Version, p.Protocol, out)
	}
}

// TestBatchThroughSuiteParser is MeshPod.RequestBatch: --count=N, split by the suite.
func TestBatchThroughSuiteParser(t *testing.T) {
	s := startServer(t)
	for _, url := range []string{"http://" + s.http + "/batch", "grpc://" + s.grpc, "http://" + s.http + "/h2"} {
		t.Run(url, func(t *testing.T) {
			const n = 50
			args := []string{"client", url, fmt.Sprintf("--count=%d", n)}
			if strings.HasSuffix(url, "/h2") {
				args = append(args, "--http2")
			}
			out, errOut, code := runSuiteArgs(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			res := suiteParse(t, out, true)
			if len(res) != n {
				t.Fatalf("the suite split %d responses, want %d\noutput:\n%s", len(res), n, out)
			}
			for i, r := range res {
				if err := (expect{grpc: strings.HasPrefix(url, "grpc"), backend: hostname()}).check(r); err != nil || r.Hostname == "" {
					t.Fatalf("response %d: %v (hostname %q)", i, err, r.Hostname)
				}
			}
		})
	}
}

func TestTCPThroughSuiteParser(t *testing.T) {
	s := startServer(t)
	out, errOut, code := runSuiteArgs(t, "client", "tcp://"+s.tcp, "--msg=ping")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	p := suiteParse(t, out, false)[0]
	if err := (expect{backend: hostname()}).check(p); err != nil || p.Protocol != "TCP" {
		t.Fatalf("%v proto %q\noutput:\n%s", err, p.Protocol, out)
	}
	if !strings.Contains(out, "[0 body] ping\n") {
		t.Fatalf("no echo of the message:\n%s", out)
	}
}

func TestClientFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	for _, url := range []string{"http://" + addr, "grpc://" + addr, "tcp://" + addr} {
		out, errOut, code := runSuiteArgs(t, "client", url, "--timeout=2s", "--count=2")
		if code == 0 || out != "" || !strings.Contains(errOut, "2/2 requests had errors") {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q", url, code, out, errOut)
		}
	}
	if _, errOut, code := runSuiteArgs(t, "client", "http://"+addr, "-H", "no-colon"); code == 0 || !strings.Contains(errOut, "invalid header") {
		t.Fatalf("a header without a colon: exit %d, %q", code, errOut)
	}
}

// TestRunAsClientName: the same binary reached through a link named client.
func TestRunAsClientName(t *testing.T) {
	s := startServer(t)
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"/usr/local/bin/client", "http://" + s.http + "/named"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if p := suiteParse(t, out.String(), false)[0]; p.URL != "/named" || p.Code != "200" {
		t.Fatalf("URL %q code %q", p.URL, p.Code)
	}
}

// TestForwardEcho: Istio's ForwardEcho over gRPC, as an Istio-style driver would call it.
func TestForwardEcho(t *testing.T) {
	s := startServer(t)
	conn, err := dialGRPC(s.grpc, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := dynamicpb.NewMessage(echoProto.fwdReq)
	setString(req, "url", "http://"+s.http+"/fwd")
	req.Set(echoProto.fwdReq.Fields().ByName("count"), protoreflect.ValueOfInt32(3))
	hs := req.Mutable(echoProto.fwdReq.Fields().ByName("headers")).List()
	h := hs.NewElement().Message()
	setString(h, "key", "X-Fwd")
	setString(h, "value", "yes")
	hs.Append(protoreflect.ValueOfMessage(h))
	resp := dynamicpb.NewMessage(echoProto.fwdResp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, "/"+echoService+"/"+forwardEchoName, req, resp, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	outs := getField(resp, "output").List()
	if outs.Len() != 3 {
		t.Fatalf("%d outputs, want 3", outs.Len())
	}
	for i := range outs.Len() {
		p := suiteParse(t, outs.Get(i).String(), false)[0]
		if err := (expect{reqHeaders: map[string]string{"X-Fwd": "yes"}, backend: hostname()}).check(p); err != nil || p.URL != "/fwd" {
			t.Fatalf("output %d: %v, URL %q", i, err, p.URL)
		}
	}
}

// TestServerFlags: the mesh manifests' arguments (conformance/mesh/manifests.yaml), and none.
func TestServerFlags(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, err := ServerFlags([]string{"--tcp=9090", "--port=8080", "--grpc=7070", "--port=8443", "--tls=8443",
		"--crt=/cert.crt", "--key=/cert.key"}, io.Discard, log)
	if err != nil {
		t.Fatal(err)
	}
	want := []Port{{ProtoHTTP, 8080, false}, {ProtoHTTP, 8443, true}, {ProtoGRPC, 7070, false}, {ProtoTCP, 9090, false}}
	if !slices.Equal(cfg.Ports, want) || cfg.CertFile != "/cert.crt" || cfg.KeyFile != "/cert.key" {
		t.Fatalf("ports %v crt %q key %q", cfg.Ports, cfg.CertFile, cfg.KeyFile)
	}
	cfg, err = ServerFlags(nil, io.Discard, log) // the consumer namespace's echo-v1 passes no args
	if err != nil {
		t.Fatal(err)
	}
	want = []Port{{ProtoHTTP, 8080, false}, {ProtoGRPC, 7070, false}, {ProtoTCP, 9090, false}}
	if !slices.Equal(cfg.Ports, want) {
		t.Fatalf("default ports %v", cfg.Ports)
	}
	if _, err := ServerFlags([]string{"--port=1,2", "--udp=5", "--version=v2"}, io.Discard, log); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerFlags([]string{"--nonsense"}, io.Discard, log); err == nil {
		t.Fatal("an unknown flag was accepted")
	}
}
