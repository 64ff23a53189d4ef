package hbone

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/testutil"
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
	ln, cancel, served := serveLoopback(t, srv, nil)

	cl := newTestClient(t, DefaultClientConfig(), nil)
	tg := target(&testServer{addr: addrOf(t, ln)})
	conn := mustDial(t, cl, tg)
	defer conn.Close()
	cancel()
	// New TCP connections are refused once the listener is closed.
	testutil.Eventually(t, testTimeout(), "the listener to refuse connections", func() bool {
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

// TestServerStreamLimit: the server's MaxConcurrentStreams, not just the client's own limit, makes
// the pool open more connections.
func TestServerStreamLimit(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxConcurrentStreams = 2
	srv := startServer(t, cfg, echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	for range 5 {
		c := mustDial(t, cl, target(srv))
		defer c.Close()
	}
	if got := cl.Stats(target(srv).Key); got.Conns != 3 || got.Streams != 5 {
		t.Errorf("stats = %+v, want 3 conns for 5 tunnels at 2 per conn", got)
	}
}

// TestServerHeaderLimit: a request whose headers exceed MaxHeaderBytes never reaches the Handler.
func TestServerHeaderLimit(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxHeaderBytes = 4 << 10
	srv := startServer(t, cfg, HandlerFunc(func(context.Context, *Request) error {
		t.Error("handler called for oversized headers")
		return ErrDenied
	}))
	cc := rawClientConn(t, srv)
	req, _ := http.NewRequest(http.MethodConnect, "", nil)
	req.URL = &url.URL{Host: "10.0.0.7:8080"}
	req.Host = "10.0.0.7:8080"
	req.Header.Set("Baggage", strings.Repeat("k=v,", 2<<10))
	resp, err := cc.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status = %d, want %d", resp.StatusCode, http.StatusRequestHeaderFieldsTooLarge)
		}
	}
}

type flakyListener struct {
	net.Listener
	failures int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures > 0 {
		l.failures--
		return nil, errors.New("accept: too many open files")
	}
	return l.Listener.Accept()
}

// TestServeSurvivesAcceptErrors: a transient accept error does not take the port down.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	c, _ := cas(t)
	tlsCfg, err := ServerTLSConfig(staticCreds(c.leaf(t, idServer), c.pool))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(DefaultServerConfig(), tlsCfg, echoHandler, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, cancel, served := serveLoopback(t, srv, func(ln net.Listener) net.Listener { return &flakyListener{Listener: ln, failures: 3} })
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(&testServer{addr: addrOf(t, ln)}))
	conn.Close()
	cl.Close()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

// TestServeWaitsForHandlers: Serve returns only after every Handler has returned.
func TestServeWaitsForHandlers(t *testing.T) {
	c, _ := cas(t)
	tlsCfg, err := ServerTLSConfig(staticCreds(c.leaf(t, idServer), c.pool))
	if err != nil {
		t.Fatal(err)
	}
	var returned atomic.Bool
	accepted := make(chan struct{})
	srv, err := NewServer(DefaultServerConfig(), tlsCfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		if _, err := req.Accept(); err != nil {
			return err
		}
		close(accepted)
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // cleanup after the tunnel ended, e.g. closing an upstream
		returned.Store(true)
		return nil
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, cancel, done := serveLoopback(t, srv, nil)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	tg := target(&testServer{addr: addrOf(t, ln)})
	conn := mustDial(t, cl, tg)
	<-accepted
	cancel()
	conn.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if !returned.Load() {
		t.Error("Serve returned before the Handler did")
	}
}

// serveLoopback runs srv.Serve on a new loopback listener (wrapped by wrap, if not nil) until
// cancel, and returns the listener and Serve's result.
func serveLoopback(t *testing.T, srv *Server, wrap func(net.Listener) net.Listener) (net.Listener, context.CancelFunc, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serving := ln
	if wrap != nil {
		serving = wrap(ln)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, serving) }()
	return ln, cancel, served
}

// TestHostilePeers: peers that present a certificate of another mesh, expect another identity,
// or open connections and never finish the handshake are refused with a log line (rate limited,
// so a flood costs no log volume either) and cost at most MaxHandshakes handshakes at once. A
// tunnel already open on the same server goes on, and another pod's server (ztunnel makes one
// per pod) serves as before.
func TestHostilePeers(t *testing.T) {
	c, foreign := cas(t)
	tlsCfg, err := ServerTLSConfig(staticCreds(c.leaf(t, idServer), c.pool))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultServerConfig()
	cfg.MaxHandshakes = 4
	var logs testutil.LogBuffer
	srv, err := NewServer(cfg, tlsCfg, echoHandler, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, cancel, _ := serveLoopback(t, srv, nil)
	defer cancel()
	tg := target(&testServer{addr: addrOf(t, ln)})
	open := mustDial(t, newTestClient(t, DefaultClientConfig(), nil), tg)
	defer open.Close()

	// A certificate from another CA, and a client that expects another identity.
	stranger, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) {
		return staticCreds(foreign.leaf(t, idClient), c.pool), nil
	}, defaultDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if conn, err := stranger.Dial(context.Background(), tg); err == nil {
		conn.Close()
		t.Error("a client with a certificate from another CA got a tunnel")
	}
	wrongID := tg
	wrongID.Key.Dst = idOther
	if conn, err := newTestClient(t, DefaultClientConfig(), nil).Dial(context.Background(), wrongID); !errors.Is(err, ErrIdentity) {
		if err == nil {
			conn.Close()
		}
		t.Errorf("dial expecting another identity = %v, want ErrIdentity", err)
	}
	testutil.Eventually(t, testTimeout(), "a log line for the refused handshake", func() bool {
		return strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "TLS handshake failed")
	})

	// A flood of connections that never send a byte: MaxHandshakes are held (until the
	// handshake timeout), the rest are closed at once. The refused handshakes above end on the
	// server's side a little after the clients give up.
	testutil.Eventually(t, testTimeout(), "no handshake under way", func() bool { return len(srv.handshakes) == 0 })
	var flood []net.Conn
	for range 12 {
		fc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer fc.Close()
		flood = append(flood, fc)
	}
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, fc := range flood { // together: the held ones time out at once
		wg.Go(func() {
			_ = fc.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := fc.Read(make([]byte, 1)); errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := int(closed.Load()); n != len(flood)-cfg.MaxHandshakes {
		t.Errorf("%d of %d idle connections closed at once, want all but the %d handshakes allowed", n, len(flood), cfg.MaxHandshakes)
	}
	if n := strings.Count(logs.String(), "\n"); n > 4 {
		t.Errorf("%d log lines for 14 refusals within a second, want them rate limited:\n%s", n, logs.String())
	}

	// The tunnel open before goes on; another pod's server takes new ones.
	if _, err := io.WriteString(open, "still"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(open, buf); err != nil || string(buf) != "still" {
		t.Errorf("open tunnel during the flood: read %q, %v", buf, err)
	}
	other := startServer(t, DefaultServerConfig(), echoHandler)
	conn := mustDial(t, newTestClient(t, DefaultClientConfig(), nil), target(other))
	conn.Close()
}
