package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// The Manager is what ztunnel's composition root and proxy take.
var _ interface {
	Run(ctx context.Context) error
	Acquire(id identity.Identity) (release func())
	Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error)
} = (*Manager)(nil)

// handshake runs an HBONE TLS handshake between a client and a server config over a pipe and
// returns the identity each side saw, or the client's error.
func handshake(t *testing.T, client, server *tls.Config) (clientSaw, serverSaw identity.Identity, err error) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	var wg sync.WaitGroup
	var serr error
	ts := tls.Server(s, server)
	wg.Go(func() {
		serr = ts.Handshake()
		if serr != nil {
			s.Close() // unblock the client
		}
	})
	tc := tls.Client(c, client)
	err = tc.Handshake()
	if err != nil {
		c.Close()
	}
	wg.Wait()
	if err != nil {
		return identity.Identity{}, identity.Identity{}, err
	}
	if serr != nil {
		return identity.Identity{}, identity.Identity{}, serr
	}
	if clientSaw, err = hbone.IdentityOf(tc.ConnectionState().PeerCertificates[0]); err != nil {
		return
	}
	serverSaw, err = hbone.IdentityOf(ts.ConnectionState().PeerCertificates[0])
	return
}

// The Manager's credentials are what hbone's TLS configs take, and its certificates pass
// hbone's peer verification at both ends.
func TestCredentialsPlugIntoHBONE(t *testing.T) {
	e := newEnv(t)
	defer e.m.Acquire(idA)()
	defer e.m.Acquire(idB)()
	e.get(idA)
	e.get(idB)

	server, err := hbone.ServerTLSConfig(e.m.Credentials(idB, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	client, err := hbone.ClientTLSConfig(e.m.Credentials(idA, time.Second), idB)
	if err != nil {
		t.Fatal(err)
	}
	clientSaw, serverSaw, err := handshake(t, client, server)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if diff := cmp.Diff([]identity.Identity{idB, idA}, []identity.Identity{clientSaw, serverSaw}); diff != "" {
		t.Errorf("identities seen (client's peer, server's peer) (-want +got):\n%s", diff)
	}

	// An identity with no certificate fails the handshake: never a connection without one.
	idC := identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "c"}
	noCert, err := hbone.ClientTLSConfig(e.m.Credentials(idC, 0), idB)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := handshake(t, noCert, server); err == nil || !strings.Contains(err.Error(), ErrNotAcquired.Error()) {
		t.Errorf("handshake without a certificate = %v, want it refused for ErrNotAcquired", err)
	}
}

// A handshake for an identity whose first certificate is on its way waits for it, bounded by
// the wait on the Manager's clock.
func TestCredentialsWait(t *testing.T) {
	e := newEnv(t)
	unblock := e.ca.block(idA)
	defer unblock()
	defer e.m.Acquire(idA)()
	creds := e.m.Credentials(idA, time.Second)

	done := make(chan error, 1)
	go func() { _, err := creds.Certificate(); done <- err }()
	// Pending: the request timeout of A's call, and the wait of the handshake.
	testutil.Eventually(t, waitFor, "the handshake to wait", func() bool { return e.clock.pending() == 2 })
	unblock()
	if err := <-done; err != nil {
		t.Fatalf("Certificate once issued: %v", err)
	}

	defer e.m.Acquire(idB)()
	unblockB := e.ca.block(idB)
	defer unblockB()
	credsB := e.m.Credentials(idB, time.Second)
	go func() { _, err := credsB.Certificate(); done <- err }()
	var err error
	testutil.Eventually(t, waitFor, "the wait to end", func() bool {
		e.clock.Advance(time.Second)
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	if !errors.Is(err, ErrPending) || !strings.Contains(err.Error(), "waited 1s") {
		t.Errorf("Certificate after the wait = %v, want ErrPending after the wait", err)
	}
}

// recordingCA answers nothing but records the authorization each call carried.
type recordingCA struct {
	cav1.UnimplementedCertificateServiceServer
	mu   sync.Mutex
	auth []string
}

func (r *recordingCA) CreateCertificate(ctx context.Context, _ *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	r.auth = append(r.auth, strings.Join(md.Get("authorization"), ","))
	r.mu.Unlock()
	return &cav1.CreateCertificateResponse{}, nil
}

func TestDialCASendsTokenReadAtEachCall(t *testing.T) {
	clock := newFakeClock()
	ca := newFakeCA(t, clock)
	key := newKey(t)
	tmpl := leafTmpl(nil, time.Now(), time.Hour)
	tmpl.IPAddresses = []net.IP{netip.MustParseAddr("127.0.0.1").AsSlice()}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	leaf, _ := sign(t, tmpl, ca.inter, key.Public(), ca.inter.key)
	serving := tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.inter.cert.Raw}, PrivateKey: key}

	rec := &recordingCA{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serving}})))
	cav1.RegisterCertificateServiceServer(srv, rec)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	defer func() { srv.Stop(); <-served }()

	token := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		if err := os.WriteFile(token, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first\n")
	c, err := DialCA(context.Background(), ln.Addr().String(), &tls.Config{RootCAs: ca.roots, MinVersion: tls.VersionTLS13}, token)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var _ CertificateClient = c
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for _, tok := range []string{"first", "second"} {
		write(tok + "\n")
		if _, err := c.CreateCertificate(ctx, &cav1.CreateCertificateRequest{}); err != nil {
			t.Fatalf("call with token %s: %v", tok, err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if diff := cmp.Diff([]string{"Bearer first", "Bearer second"}, rec.auth); diff != "" {
		t.Errorf("authorization sent (-want +got):\n%s", diff)
	}
}

func TestDialCARefusesCleartextToken(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]*tls.Config{"no TLS": nil, "skip verify": {InsecureSkipVerify: true}} {
		if c, err := DialCA(ctx, "127.0.0.1:1", cfg, "/token"); err == nil {
			c.Close()
			t.Errorf("%s: DialCA succeeded", name)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Default()
	ok.CA = &fakeCA{}
	ok.Roots = func() *x509.CertPool { return nil }
	if err := ok.Validate(); err != nil {
		t.Fatalf("Default with CA and Roots: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no CA", func(c *Config) { c.CA = nil }, "missing CA"},
		{"no roots", func(c *Config) { c.Roots = nil }, "missing Roots"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Upper" }, "TrustDomain"},
		{"short validity", func(c *Config) { c.Validity = time.Second }, "validity"},
		{"no retry", func(c *Config) { c.RetryInitial = 0 }, "RetryInitial"},
		{"max below initial", func(c *Config) { c.RetryMax = c.RetryInitial / 2 }, "RetryMax"},
		{"no request timeout", func(c *Config) { c.RequestTimeout = 0 }, "RequestTimeout"},
		{"no clock", func(c *Config) { c.Clock = nil }, "missing Clock"},
		{"no log", func(c *Config) { c.Log = nil }, "missing Log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %v, want an error naming %q", err, tt.want)
			}
			if _, err := New(c); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}
