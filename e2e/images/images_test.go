package images

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
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
	cfg := EchoConfig{HTTPAddr: freeAddr(t), TCPAddr: freeAddr(t)}
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
}

// TestLoadTools: the load modes of the client image against a TCP echo server: request/response
// on persistent connections, idle connections held, many short connections, one long one.
func TestLoadTools(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { _ = serveTCPEcho(l) }()
	addr := l.Addr().String()
	ctx := context.Background()

	res, err := RR(ctx, RRConfig{Addr: addr, Rate: 500, Conns: 3, Size: 1024, Duration: 60 * time.Millisecond, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 30 || res.Errors != 0 || res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max {
		t.Errorf("rr result %+v, want 30 requests, no errors, ordered percentiles", res)
	}
	if _, err := RR(ctx, RRConfig{Addr: addr}); err == nil {
		t.Error("rr with no rate: no error")
	}

	held, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- HoldIdle(held, addr, 20, 5*time.Second, stop) }() // stops once all are open
	if err := <-done; err != nil {
		t.Errorf("idle: %v", err)
	}

	if err := Hold(ctx, addr, 3, time.Millisecond, 5*time.Second); err != nil {
		t.Errorf("hold: %v", err)
	}
	if err := Hold(ctx, freeAddr(t), 3, time.Millisecond, time.Second); err == nil {
		t.Error("hold to a closed port: no error")
	}
}
