package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// fakeADS is a delta xDS server driven by the test: it checks the bearer token, hands each
// accepted stream to the test, and sends what the test tells it to.
type fakeADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	token    atomic.Pointer[string] // the token accepted
	refuse   atomic.Bool            // refuse streams with Unavailable
	attempts atomic.Int32           // streams opened, refused or not
	streams  chan *fakeStream
}

type fakeStream struct {
	auth string
	reqs chan *discoveryv3.DeltaDiscoveryRequest
	out  chan *discoveryv3.DeltaDiscoveryResponse
	end  chan error // ends the stream with this error
}

func (f *fakeADS) DeltaAggregatedResources(gs discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	f.attempts.Add(1)
	if f.refuse.Load() {
		return status.Error(codes.Unavailable, "refusing streams")
	}
	md, _ := metadata.FromIncomingContext(gs.Context())
	auth := md.Get("authorization")
	if len(auth) != 1 || auth[0] != "Bearer "+*f.token.Load() {
		return status.Errorf(codes.Unauthenticated, "bad token %q", auth)
	}
	fs := &fakeStream{
		auth: auth[0],
		reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 64),
		out:  make(chan *discoveryv3.DeltaDiscoveryResponse, 64),
		end:  make(chan error, 1),
	}
	ctx := gs.Context()
	go func() {
		defer close(fs.reqs)
		for {
			req, err := gs.Recv()
			if err != nil {
				return
			}
			select {
			case fs.reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	f.streams <- fs
	for {
		select {
		case r := <-fs.out:
			if err := gs.Send(r); err != nil {
				return err
			}
		case err := <-fs.end:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// next returns the next request of the stream.
func (fs *fakeStream) next(t *testing.T) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case r, ok := <-fs.reqs:
		if !ok {
			t.Fatal("stream ended while a request was expected")
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no request within 10s")
	}
	return nil
}

func (f *fakeADS) nextStream(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case s := <-f.streams:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no stream within 10s")
	}
	return nil
}

// harness is a fake server on loopback TLS and a client configured for it.
type harness struct {
	ads       *fakeADS
	cfg       Config
	tokenFile string
	logs      *testutil.LogBuffer
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	cert, key, _ := selfSigned(t, DefaultServerName)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
	})))
	ads := &fakeADS{streams: make(chan *fakeStream, 8)}
	tok := "token-1"
	ads.token.Store(&tok)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, ads)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	h := &harness{ads: ads, tokenFile: filepath.Join(t.TempDir(), "token"), logs: &testutil.LogBuffer{}}
	h.writeToken(t, tok)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	h.cfg = Default()
	h.cfg.Addr = lis.Addr().String()
	h.cfg.TLS = &tls.Config{RootCAs: roots, ServerName: DefaultServerName, MinVersion: tls.VersionTLS13}
	h.cfg.TokenFile = h.tokenFile
	h.cfg.Node = "ztunnel~node-1"
	h.cfg.Backoff = Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond}
	h.cfg.Log = slog.New(slog.NewTextHandler(h.logs, nil))
	return h
}

func (h *harness) writeToken(t *testing.T, tok string) {
	t.Helper()
	// Replaced by rename, as the kubelet rotates projected tokens.
	tmp := h.tokenFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, h.tokenFile); err != nil {
		t.Fatal(err)
	}
}

// run starts c.Run and stops it at cleanup, checking that cancellation returns nil.
func run(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancellation = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancellation")
		}
	})
}
