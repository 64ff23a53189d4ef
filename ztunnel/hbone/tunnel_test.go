package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*ServerConfig)
		wantErr bool
	}{
		{name: "default", mutate: func(*ServerConfig) {}},
		{name: "zero stream window", mutate: func(c *ServerConfig) { c.StreamWindowMiB = 0 }, wantErr: true},
		{name: "conn window overflows", mutate: func(c *ServerConfig) { c.StreamWindowMiB, c.ConnWindowMultiple = 1024, 2 }, wantErr: true},
		{name: "tiny headers", mutate: func(c *ServerConfig) { c.MaxHeaderBytes = 10 }, wantErr: true},
		{name: "no streams", mutate: func(c *ServerConfig) { c.MaxConcurrentStreams = 0 }, wantErr: true},
		{name: "no ping", mutate: func(c *ServerConfig) { c.PingInterval = 0 }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultServerConfig()
			tt.mutate(&cfg)
			if err := cfg.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, tt.wantErr)
			}
		})
	}
	// Every problem is reported, not just the first.
	cfg := ClientConfig{}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("zero ClientConfig validated")
	}
	if got := len(err.(interface{ Unwrap() []error }).Unwrap()); got < 8 {
		t.Errorf("zero ClientConfig: %d errors joined, want every field reported: %v", got, err)
	}
	if err := DefaultClientConfig().Validate(); err != nil {
		t.Errorf("DefaultClientConfig().Validate() = %v", err)
	}
}

// TestTunnel checks what a handler sees and both half-closes: the client's FIN reaches the server
// as end of stream while the server can still answer, and the server's end reaches the client.
func TestTunnel(t *testing.T) {
	got := make(chan Request, 1)
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		got <- *req
		conn, err := req.Accept()
		if err != nil {
			return err
		}
		in, err := io.ReadAll(conn) // returns at the client's CloseWrite
		if err != nil {
			return err
		}
		_, err = conn.Write(append([]byte("got "), in...))
		return err
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	tg := target(srv)
	tg.Forwarded = `for="10.0.0.1:4567"`
	tg.Baggage = "k=v"
	tg.Traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	conn := mustDial(t, cl, tg)
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	resp, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp) != "got hello" {
		t.Errorf("response = %q, want %q", resp, "got hello")
	}
	req := <-got
	want := Request{
		Authority:   tg.Authority,
		Peer:        idClient,
		Forwarded:   tg.Forwarded,
		Baggage:     tg.Baggage,
		Traceparent: tg.Traceparent,
	}
	if diff := cmp.Diff(want, req, cmpopts.IgnoreUnexported(Request{}), cmpopts.EquateComparable(netip.AddrPort{}), cmpopts.IgnoreFields(Request{}, "Header", "LocalAddr", "RemoteAddr")); diff != "" {
		t.Errorf("request mismatch (-want +got):\n%s", diff)
	}
	if req.RemoteAddr == nil || req.LocalAddr == nil {
		t.Errorf("addresses not set: local %v remote %v", req.LocalAddr, req.RemoteAddr)
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{name: "denied", err: ErrDenied, want: 401},
		{name: "unreachable", err: ErrUpstreamUnreachable, want: 503},
		{name: "bad request", err: ErrBadRequest, want: 400},
		{name: "other error", err: errors.New("boom"), want: 503},
		{name: "wrapped denied", err: errors.Join(errors.New("policy x"), ErrDenied), want: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(context.Context, *Request) error { return tt.err }))
			cl := newTestClient(t, DefaultClientConfig(), nil)
			_, err := cl.Dial(context.Background(), target(srv))
			var se ErrStatus
			if !errors.As(err, &se) {
				t.Fatalf("Dial error = %v, want ErrStatus", err)
			}
			if se.Code != tt.want {
				t.Errorf("status = %d, want %d", se.Code, tt.want)
			}
			// The stream went back to the pool.
			if s := cl.Stats(target(srv).Key); s.Streams != 0 {
				t.Errorf("streams after failed dial = %d, want 0", s.Streams)
			}
		})
	}
}

// TestLargeTransfer sends random data both ways at once and compares checksums.
func TestLargeTransfer(t *testing.T) {
	const size = 24 << 20
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()

	src := rand.NewChaCha8([32]byte{1})
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(conn, sent), src, size)
		if err == nil {
			err = conn.CloseWrite()
		}
		errc <- err
	}()
	recv := sha256.New()
	n, err := io.Copy(recv, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != size {
		t.Fatalf("received %d bytes, want %d", n, size)
	}
	if !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		t.Error("checksum mismatch")
	}
}

// TestConcurrentStreams runs many tunnels at once over the pool, each with its own data.
func TestConcurrentStreams(t *testing.T) {
	const streams, size = 64, 128 << 10
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cfg := DefaultClientConfig()
	cfg.MaxStreamsPerConn = 16
	cl := newTestClient(t, cfg, nil)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			conn, err := cl.Dial(context.Background(), target(srv))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			data := make([]byte, size)
			rand.NewChaCha8([32]byte{byte(i)}).Read(data)
			go func() {
				conn.Write(data)
				conn.CloseWrite()
			}()
			got, err := io.ReadAll(conn)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- errors.New("echo mismatch")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// How many tunnels overlap depends on scheduling; the pool never needs more connections than
	// all of them at once would fill.
	if s := cl.Stats(target(srv).Key); s.Conns < 1 || s.Conns > streams/cfg.MaxStreamsPerConn || s.Streams != 0 {
		t.Errorf("stats = %+v, want 1 to %d conns and no streams", s, streams/cfg.MaxStreamsPerConn)
	}
}

func TestPoolLimitAndReuse(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cfg := DefaultClientConfig()
	cfg.MaxStreamsPerConn = 2
	cl := newTestClient(t, cfg, nil)
	key := target(srv).Key

	var conns []Conn
	for range 5 {
		conns = append(conns, mustDial(t, cl, target(srv)))
	}
	if diff := cmp.Diff(PoolStats{Conns: 3, Streams: 5}, cl.Stats(key)); diff != "" {
		t.Errorf("stats with 5 tunnels, 2 per conn (-want +got):\n%s", diff)
	}
	for _, c := range conns {
		c.Close()
	}
	if diff := cmp.Diff(PoolStats{Conns: 3}, cl.Stats(key)); diff != "" {
		t.Errorf("stats after close (-want +got):\n%s", diff)
	}
	// Reuse: new tunnels ride the open connections; the server sees no new TCP connection.
	before := srv.openTCP()
	for range 4 {
		c := mustDial(t, cl, target(srv))
		defer c.Close()
	}
	if got := srv.openTCP(); got != before {
		t.Errorf("server TCP conns = %d after reuse, want %d", got, before)
	}
	// A different destination identity is a different pool.
	other := target(srv)
	other.Dst = idOther
	if _, err := cl.Dial(context.Background(), other); !errors.Is(err, ErrIdentity) {
		t.Errorf("Dial expecting %v = %v, want ErrIdentity", idOther, err)
	}
}

func TestPoolSharedDial(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	var mu sync.Mutex
	dials := 0
	release := make(chan struct{})
	dial := func(ctx context.Context, addr netip.AddrPort) (conn netConn, err error) {
		mu.Lock()
		dials++
		mu.Unlock()
		<-release // hold the dial until every caller waits for it
		return defaultDial(ctx, addr)
	}
	cl := newTestClient(t, DefaultClientConfig(), dial)
	const callers = 20
	var wg sync.WaitGroup
	conns := make(chan Conn, callers)
	for range callers {
		wg.Go(func() {
			c, err := cl.Dial(context.Background(), target(srv))
			if err != nil {
				t.Error(err)
				return
			}
			conns <- c
		})
	}
	testutil.Eventually(t, testTimeout(), "a dial to start", func() bool { mu.Lock(); defer mu.Unlock(); return dials > 0 })
	close(release)
	wg.Wait()
	close(conns)
	for c := range conns {
		c.Close()
	}
	if dials != 1 {
		t.Errorf("dials = %d, want 1 shared by %d callers", dials, callers)
	}
}

func TestPoolIdleRelease(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cfg := DefaultClientConfig()
	cfg.IdleTimeout = 20 * time.Millisecond
	cl := newTestClient(t, cfg, nil)
	key := target(srv).Key
	c := mustDial(t, cl, target(srv))
	c.Close()
	testutil.Eventually(t, testTimeout(), "the connection closed at both ends", func() bool { return cl.Stats(key).Conns == 0 && srv.openTCP() == 0 })
}

// TestPoolRetiresExpiredAuthentication: once the certificate a pooled connection was
// authenticated with has expired, new tunnels take a fresh handshake with the renewed one, and
// the tunnels already open on the old connection go on.
func TestPoolRetiresExpiredAuthentication(t *testing.T) {
	c, _ := cas(t)
	start := time.Now()
	srv := startServerWith(t, DefaultServerConfig(),
		staticCreds(c.leafWith(t, leafOpts{uris: []*url.URL{idServer.URL()}, notAfter: start.Add(4 * time.Hour)}), c.pool), echoHandler)
	var mu sync.Mutex
	now := start
	cert := c.leafWith(t, leafOpts{uris: []*url.URL{idClient.URL()}, notAfter: start.Add(time.Hour)})
	creds := Credentials{
		Certificate: func() (*tls.Certificate, error) { mu.Lock(); defer mu.Unlock(); return cert, nil },
		Roots:       func() *x509.CertPool { return c.pool },
		Now:         func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	}
	cl, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) { return creds, nil }, defaultDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	key := target(srv).Key
	open := mustDial(t, cl, target(srv))
	defer open.Close()
	if got := mustDial(t, cl, target(srv)); srv.openTCP() != 1 {
		t.Fatalf("a second tunnel before expiry opened connection %d, want it on the first", srv.openTCP())
	} else {
		got.Close()
	}

	// Renewed, and the first certificate's time is up.
	mu.Lock()
	cert = c.leafWith(t, leafOpts{uris: []*url.URL{idClient.URL()}, notAfter: start.Add(3 * time.Hour)})
	now = start.Add(90 * time.Minute)
	mu.Unlock()
	fresh := mustDial(t, cl, target(srv))
	defer fresh.Close()
	if got := srv.openTCP(); got != 2 {
		t.Errorf("server TCP connections = %d after the certificate expired, want 2 (a fresh handshake beside the open tunnel's)", got)
	}
	if got := cl.Stats(key).Conns; got != 1 {
		t.Errorf("pooled connections = %d, want 1 (the expired one left the pool)", got)
	}
	for name, conn := range map[string]Conn{"open before expiry": open, "fresh": fresh} {
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatalf("%s tunnel: write: %v", name, err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
			t.Errorf("%s tunnel: read %q, %v", name, buf, err)
		}
	}
	open.Close()
	testutil.Eventually(t, testTimeout(), "the expired connection closed once its tunnel ended", func() bool { return srv.openTCP() == 1 })
}

// TestServerRefusesExpiredPeer: a client that keeps using a connection after its certificate
// expired (its clock is behind, or it is not ours) gets no new tunnel on it; the open ones go
// on, and a fresh handshake with the expired certificate fails.
func TestServerRefusesExpiredPeer(t *testing.T) {
	c, _ := cas(t)
	srv := startServerWith(t, DefaultServerConfig(), staticCreds(c.leaf(t, idServer), c.pool), echoHandler)
	start := time.Now()
	notAfter := start.Add(time.Second)
	creds := staticCreds(c.leafWith(t, leafOpts{uris: []*url.URL{idClient.URL()}, notAfter: notAfter}), c.pool)
	creds.Now = func() time.Time { return start } // the client never sees its certificate expire
	cl, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) { return creds, nil }, defaultDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	open := mustDial(t, cl, target(srv))
	defer open.Close()
	testutil.Eventually(t, testTimeout(), "the client certificate expired", func() bool { return time.Now().After(notAfter) })
	if conn, err := cl.Dial(context.Background(), target(srv)); err == nil {
		conn.Close()
		t.Fatal("a tunnel opened with an expired client certificate")
	}
	if _, err := open.Write([]byte("ping")); err != nil {
		t.Fatalf("tunnel open before expiry: write: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(open, buf); err != nil || string(buf) != "ping" {
		t.Errorf("tunnel open before expiry: read %q, %v", buf, err)
	}
}

func TestPoolDeadPeer(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	var frozen []*freezableConn
	var mu sync.Mutex
	dial := func(ctx context.Context, addr netip.AddrPort) (netConn, error) {
		c, err := defaultDial(ctx, addr)
		if err != nil {
			return nil, err
		}
		fc := newFreezable(c)
		mu.Lock()
		frozen = append(frozen, fc)
		mu.Unlock()
		return fc, nil
	}
	cfg := DefaultClientConfig()
	cfg.PingInterval = 100 * time.Millisecond
	cfg.PingTimeout = 300 * time.Millisecond
	cl := newTestClient(t, cfg, dial)
	key := target(srv).Key
	c := mustDial(t, cl, target(srv))
	defer c.Close()
	if got := cl.Stats(key).Conns; got != 1 {
		t.Fatalf("conns = %d, want 1", got)
	}
	// The peer stops answering: nothing more is read from it, so PINGs go unanswered.
	mu.Lock()
	for _, fc := range frozen { // a connection that a slow machine lost during Dial too
		fc.freeze()
	}
	mu.Unlock()
	testutil.Eventually(t, testTimeout(), "the pool to drop the dead connections", func() bool { return cl.Stats(key).Conns == 0 })
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read on a tunnel over a dead connection succeeded")
	}
	// The next tunnel gets a fresh connection.
	c2 := mustDial(t, cl, target(srv))
	c2.Close()
}

func TestIdentityAndTrust(t *testing.T) {
	good, other := cas(t)
	tests := []struct {
		name       string
		serverCert func(t *testing.T) Credentials
		clientCert func(t *testing.T) Credentials
		dst        identity.Identity
		want       error
	}{
		{
			name:       "server identity mismatch",
			serverCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idOther), good.pool) },
			clientCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idClient), good.pool) },
			dst:        idServer,
			want:       ErrIdentity,
		},
		{
			name:       "server untrusted",
			serverCert: func(t *testing.T) Credentials { return staticCreds(other.leaf(t, idServer), good.pool) },
			clientCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idClient), good.pool) },
			dst:        idServer,
			want:       ErrUntrusted,
		},
		{
			name: "server expired",
			serverCert: func(t *testing.T) Credentials {
				return staticCreds(good.leafWith(t, leafOpts{uris: []*url.URL{idServer.URL()}, notAfter: time.Now().Add(-time.Minute)}), good.pool)
			},
			clientCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idClient), good.pool) },
			dst:        idServer,
			want:       ErrUntrusted,
		},
		{
			name:       "client untrusted",
			serverCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idServer), good.pool) },
			clientCert: func(t *testing.T) Credentials { return staticCreds(other.leaf(t, idClient), good.pool) },
			dst:        idServer,
			want:       errHandshake,
		},
		{
			name:       "client expired",
			serverCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idServer), good.pool) },
			clientCert: func(t *testing.T) Credentials {
				return staticCreds(good.leafWith(t, leafOpts{uris: []*url.URL{idClient.URL()}, notAfter: time.Now().Add(-time.Minute)}), good.pool)
			},
			dst:  idServer,
			want: errHandshake,
		},
		{
			name:       "client without identity",
			serverCert: func(t *testing.T) Credentials { return staticCreds(good.leaf(t, idServer), good.pool) },
			clientCert: func(t *testing.T) Credentials { return staticCreds(good.leafWith(t, leafOpts{}), good.pool) },
			dst:        idServer,
			want:       errHandshake,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := startServerWith(t, DefaultServerConfig(), tt.serverCert(t), HandlerFunc(func(ctx context.Context, req *Request) error {
				calls.Add(1)
				return echoHandler(ctx, req)
			}))
			creds := tt.clientCert(t)
			cl, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) { return creds, nil }, defaultDial, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			tg := target(srv)
			tg.Dst = tt.dst
			conn, err := cl.Dial(context.Background(), tg)
			if err == nil {
				conn.Close()
				t.Fatal("tunnel opened, want rejection")
			}
			if tt.want != errHandshake && !errors.Is(err, tt.want) {
				t.Errorf("error = %v, want %v", err, tt.want)
			}
			// A rejected client certificate reaches the client as an alert or a closed connection,
			// depending on timing; what matters is that no tunnel opened and no Handler ran.
			if n := calls.Load(); n != 0 {
				t.Errorf("handler called %d times for a rejected peer", n)
			}
		})
	}
}

// TestConcurrentReadsAndWrites: several goroutines reading and writing the same tunnel at once
// (net.Conn allows it) neither lose nor duplicate bytes.
func TestConcurrentReadsAndWrites(t *testing.T) {
	const writers, perWriter = 4, 256 << 10
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			buf := bytes.Repeat([]byte{byte('a' + i)}, 1000)
			for sent := 0; sent < perWriter; sent += len(buf) {
				conn.Write(buf[:min(len(buf), perWriter-sent)])
			}
		})
	}
	var mu sync.Mutex
	counts := map[byte]int{}
	var rg sync.WaitGroup
	for range 3 {
		rg.Go(func() {
			buf := make([]byte, 777)
			for {
				n, err := conn.Read(buf)
				mu.Lock()
				for _, b := range buf[:n] {
					counts[b]++
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	conn.CloseWrite()
	rg.Wait()
	for i := range writers {
		if got := counts[byte('a'+i)]; got != perWriter {
			t.Errorf("writer %d: echoed %d bytes, want %d", i, got, perWriter)
		}
	}
	if len(counts) != writers {
		t.Errorf("bytes from %d sources, want %d", len(counts), writers)
	}
}
