package hbone

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-mesh/ambient/api/identity"
)

func TestMain(m *testing.M) {
	goAwayWait = 5 * time.Second
	goleak.VerifyTestMain(m)
}

var (
	idClient = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}
	idServer = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "server"}
	idOther  = identity.Identity{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "server"}
)

// ca is a test certificate authority.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var (
	caOnce          sync.Once
	testCA, otherCA *ca
)

func cas(t testing.TB) (*ca, *ca) {
	caOnce.Do(func() { testCA, otherCA = newCA(t), newCA(t) })
	return testCA, otherCA
}

func newCA(t testing.TB) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"test mesh"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert: cert, key: key, pool: pool}
}

type leafOpts struct {
	uris      []*url.URL
	notBefore time.Time
	notAfter  time.Time
}

// leaf issues a workload certificate for id, valid for both ends of a tunnel.
func (c *ca) leaf(t testing.TB, id identity.Identity) *tls.Certificate {
	return c.leafWith(t, leafOpts{uris: []*url.URL{id.URL()}})
}

func (c *ca) leafWith(t testing.TB, o leafOpts) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Minute)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(time.Hour)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		URIs:         o.uris,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func staticCreds(cert *tls.Certificate, roots *x509.CertPool) Credentials {
	return Credentials{
		Certificate: func() (*tls.Certificate, error) { return cert, nil },
		Roots:       func() *x509.CertPool { return roots },
	}
}

// testServer is a running Server on loopback.
type testServer struct {
	addr    netip.AddrPort
	openTCP func() int
}

func startServer(t testing.TB, cfg ServerConfig, h Handler) *testServer {
	t.Helper()
	c, _ := cas(t)
	return startServerWith(t, cfg, staticCreds(c.leaf(t, idServer), c.pool), h)
}

func startServerWith(t testing.TB, cfg ServerConfig, creds Credentials, h Handler) *testServer {
	t.Helper()
	tlsCfg, err := ServerTLSConfig(creds)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, tlsCfg, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, cl) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{addr: netip.MustParseAddrPort(ln.Addr().String()), openTCP: cl.open}
}

type countingListener struct {
	net.Listener
	mu       sync.Mutex
	accepted int
	closed   int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.accepted++
	l.mu.Unlock()
	return &closeCounting{Conn: c, l: l}, nil
}

func (l *countingListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted - l.closed
}

type closeCounting struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *closeCounting) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.closed++
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func newTestClient(t testing.TB, cfg ClientConfig, dial Dialer) *Client {
	t.Helper()
	c, _ := cas(t)
	cert := c.leaf(t, idClient)
	if dial == nil {
		dial = defaultDial // unmarked: tests run without CAP_NET_ADMIN too
	}
	cl, err := NewClient(cfg, func(identity.Identity) (Credentials, error) { return staticCreds(cert, c.pool), nil }, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func target(srv *testServer) Target {
	return Target{
		Key:       Key{Src: idClient, Dst: idServer, Addr: srv.addr},
		Authority: netip.MustParseAddrPort("10.0.0.7:8080"),
	}
}

// echoHandler accepts every tunnel and echoes it, half-closing after the client does.
var echoHandler = HandlerFunc(func(ctx context.Context, req *Request) error {
	conn, err := req.Accept()
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	if _, err := io.CopyBuffer(writerOnly{conn}, readerOnly{conn}, buf); err != nil {
		return err
	}
	return conn.CloseWrite()
})

type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

func mustDial(t testing.TB, cl *Client, tg Target) Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cl.Dial(ctx, tg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c
}

func testTimeout() time.Duration {
	if os.Getenv("CI") == "true" {
		return 30 * time.Second
	}
	return 10 * time.Second
}

type netConn = net.Conn

func defaultDial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr.String())
}

// freezableConn stops delivering reads once frozen, as a peer that vanished without a FIN.
type freezableConn struct {
	net.Conn
	frozen chan struct{}
	closed chan struct{}
	once   sync.Once
	fonce  sync.Once
}

func newFreezable(c net.Conn) *freezableConn {
	return &freezableConn{Conn: c, frozen: make(chan struct{}), closed: make(chan struct{})}
}

func (c *freezableConn) freeze() { c.fonce.Do(func() { close(c.frozen) }) }

func (c *freezableConn) Read(p []byte) (int, error) {
	select {
	case <-c.frozen:
		<-c.closed
		return 0, net.ErrClosed
	default:
	}
	return c.Conn.Read(p)
}

func (c *freezableConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

var errHandshake = errors.New("handshake rejected")

func addrOf(t testing.TB, ln net.Listener) netip.AddrPort {
	t.Helper()
	return netip.MustParseAddrPort(ln.Addr().String())
}
