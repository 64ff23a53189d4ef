package images

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestEchoHTTPAndTCP(t *testing.T) {
	t.Setenv("POD_NAME", "echo-1")
	t.Setenv("POD_NAMESPACE", "ns1")
	cfg := EchoConfig{HTTPAddr: freeAddr(t), TCPAddr: freeAddr(t), GRPCAddr: freeAddr(t), GreetAddr: freeAddr(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunEcho(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunEcho: %v", err)
		}
	}()
	for _, tc := range []struct {
		h2c   bool
		proto string
	}{{false, "HTTP/1.1"}, {true, "HTTP/2.0"}} {
		var code int
		var body []byte
		var err error
		deadline := time.Now().Add(5 * time.Second)
		for {
			code, body, err = HTTPGet(ctx, "http://"+cfg.HTTPAddr+"/p?x=1", tc.h2c, time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil || code != 200 {
			t.Fatalf("h2c=%v: %d %v", tc.h2c, code, err)
		}
		var r EchoReply
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		if r.Proto != tc.proto || r.Path != "/p?x=1" || r.Pod != "echo-1" || r.Namespace != "ns1" || r.Method != "GET" {
			t.Errorf("h2c=%v: reply %+v", tc.h2c, r)
		}
	}
	got, err := TCPEcho(ctx, cfg.TCPAddr, "half-closed", 2*time.Second)
	if err != nil || got != "half-closed" {
		t.Errorf("TCPEcho = %q, %v", got, err)
	}
	if got, err := TCPLine(ctx, cfg.TCPAddr, "hi\n", 2*time.Second); err != nil || got != "hi\n" {
		t.Errorf("TCPLine of the echo = %q, %v", got, err)
	}
	if got, err := TCPLine(ctx, cfg.GreetAddr, "", 2*time.Second); err != nil || got != "hello from echo-1\n" {
		t.Errorf("TCPLine of the server-first port = %q, %v", got, err)
	}
	if g, r, err := TCPGreet(ctx, cfg.GreetAddr, "HELO x\r\n", 2*time.Second); err != nil || g != "hello from echo-1\n" || r != "HELO x\r\n" {
		t.Errorf("TCPGreet = %q, %q, %v", g, r, err)
	}
	if got, err := WebSocketEcho(ctx, "ws://"+cfg.HTTPAddr+"/ws", "over websocket", 2*time.Second); err != nil || got != "over websocket" {
		t.Errorf("WebSocketEcho = %q, %v", got, err)
	}
	if got, err := GRPCHealth(ctx, cfg.GRPCAddr, 2*time.Second); err != nil || got != "SERVING" {
		t.Errorf("GRPCHealth = %q, %v", got, err)
	}
}

// TestLoadTools: the load modes of the client image against the echo and source servers, in
// plain TCP and mutual TLS 1.3: open-loop rate on persistent and new connections, closed-loop
// maximum, connection rate, one stream, idle connections held, and refusals of bad settings.
func TestLoadTools(t *testing.T) {
	listen := func(serve func(net.Listener) error, cfg *tls.Config) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if cfg != nil {
			l = tls.NewListener(l, cfg)
		}
		go func() { _ = serve(l) }()
		return l.Addr().String()
	}
	serverTLS, clientTLS := mutualTLSPair(t)
	addr := listen(serveTCPEcho, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  LoadConfig
		want int64 // requests, when the schedule fixes it
	}{
		{"rate", LoadConfig{Mode: ModeRate, Addr: addr, Rate: 500, Conns: 3, Size: 1024, Duration: 60 * time.Millisecond}, 30},
		{"rate new connections", LoadConfig{Mode: ModeRate, Addr: addr, Rate: 500, Conns: 3, Size: 64, NewConn: true, Duration: 60 * time.Millisecond}, 30},
		{"rate tls", LoadConfig{Mode: ModeRate, Addr: listen(serveTCPEcho, serverTLS), Rate: 500, Conns: 2, Size: 1024, NewConn: true, Duration: 40 * time.Millisecond, TLS: clientTLS}, 20},
		{"max", LoadConfig{Mode: ModeMax, Addr: addr, Conns: 4, Size: 1024, Duration: 50 * time.Millisecond}, -1},
		{"rate http", LoadConfig{Mode: ModeRate, Addr: listen(func(l net.Listener) error { return http.Serve(l, http.HandlerFunc(echoBody)) }, nil),
			Rate: 500, Conns: 2, Size: 1024, HTTP: true, Duration: 60 * time.Millisecond}, 30},
		{"connrate", LoadConfig{Mode: ModeConnRate, Addr: addr, Conns: 2, Size: 1, Duration: 50 * time.Millisecond}, -1},
	} {
		res, err := RunLoad(ctx, tc.cfg)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		ordered := len(res.Latency) == len(Quantiles) && res.Latency[0] > 0
		for i := 1; ordered && i < len(res.Latency); i++ {
			ordered = res.Latency[i-1] <= res.Latency[i]
		}
		if res.Errors != 0 || !ordered || res.Achieved <= 0 || (tc.want >= 0 && res.Requests != tc.want) || (tc.want < 0 && res.Requests == 0) {
			t.Errorf("%s: %+v, want %d requests, no errors, ordered latencies", tc.name, res, tc.want)
		}
		if res.Percentile(99) != res.Latency[4] || res.Percentile(100) != res.Latency[len(res.Latency)-1] {
			t.Errorf("%s: Percentile does not index Quantiles", tc.name)
		}
	}
	for _, cfg := range []*tls.Config{nil, clientTLS} {
		target := listen(serveSource, nil)
		if cfg != nil {
			target = listen(serveSource, serverTLS)
		}
		res, err := RunLoad(ctx, LoadConfig{Mode: ModeStream, Addr: target, Duration: 30 * time.Millisecond, TLS: cfg})
		if err != nil || res.BytesPerSecond <= 0 {
			t.Errorf("stream (tls %v): %+v, %v", cfg != nil, res, err)
		}
	}
	for _, bad := range []LoadConfig{
		{Mode: ModeRate, Addr: addr, Conns: 1, Size: 1, Duration: time.Millisecond},                // no rate
		{Mode: "burst", Addr: addr, Conns: 1, Size: 1, Duration: time.Millisecond},                 // unknown mode
		{Mode: ModeMax, Addr: addr, Size: 1, Duration: time.Millisecond},                           // no connections
		{Mode: ModeMax, Addr: freeAddr(t), Conns: 1, Size: 1, Duration: time.Millisecond},          // nothing listening
		{Mode: ModeConnRate, Addr: freeAddr(t), Conns: 1, Size: 1, Duration: 5 * time.Millisecond}, // every request fails
	} {
		if _, err := RunLoad(ctx, bad); err == nil {
			t.Errorf("RunLoad(%+v): no error", bad)
		}
	}

	for _, cfg := range []*tls.Config{nil, clientTLS} {
		target := addr
		if cfg != nil {
			target = listen(serveTCPEcho, serverTLS)
		}
		held, stop := context.WithCancel(ctx)
		if err := HoldIdle(held, target, 20, 5*time.Second, cfg, stop); err != nil { // stops once all are open
			t.Errorf("idle (tls %v): %v", cfg != nil, err)
		}
	}

	if err := Hold(ctx, addr, 3, time.Millisecond, 5*time.Second); err != nil {
		t.Errorf("hold: %v", err)
	}
	if err := Hold(ctx, freeAddr(t), 3, time.Millisecond, time.Second); err == nil {
		t.Error("hold to a closed port: no error")
	}
}

// mutualTLSPair is a server and a client configuration that trust each other through one CA.
func mutualTLSPair(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaf := func(serial int64, name string) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	server = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf(2, "server")}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	client = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf(3, "client")}, RootCAs: pool, ServerName: "server"}
	return server, client
}
