package hbone

import (
	"context"
	"io"
	"net"
	"testing"
)

// TestServeDrains: after Serve's context ends, an open tunnel keeps working until it finishes, new
// connections are refused, and Serve returns nil once the tunnel is done.
func TestServeDrains(t *testing.T) {
	c, _ := cas(t)
	tlsCfg, err := ServerTLSConfig(staticCreds(c.leaf(t, idServer), c.pool))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultServerConfig()
	cfg.DrainTimeout = testTimeout()
	srv, err := NewServer(cfg, tlsCfg, echoHandler, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	cl := newTestClient(t, DefaultClientConfig(), nil)
	tg := target(&testServer{addr: addrOf(t, ln)})
	conn := mustDial(t, cl, tg)
	defer conn.Close()
	cancel()
	// New TCP connections are refused once the listener is closed.
	eventually(t, testTimeout(), func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v with a tunnel open", err)
	default:
	}
	// The open tunnel still carries data both ways.
	if _, err := io.WriteString(conn, "still here"); err != nil {
		t.Fatal(err)
	}
	conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "still here" {
		t.Fatalf("echo after shutdown = %q, %v", got, err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}
