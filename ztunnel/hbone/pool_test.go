package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

// TestCloseDuringDial: Client.Close while a dial is in flight: the dial's connection is closed,
// Dial fails with net.ErrClosed, and the client stays usable (no lock held for ever).
func TestCloseDuringDial(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	c, _ := cas(t)
	cert := c.leaf(t, idClient)
	entered := make(chan struct{})
	release := make(chan struct{})
	dial := func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
		close(entered)
		<-release
		return defaultDial(ctx, a)
	}
	cl, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) { return staticCreds(cert, c.pool), nil }, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout())
	defer cancel()
	dialErr := make(chan error, 1)
	go func() { _, err := cl.Dial(ctx, target(srv)); dialErr <- err }()
	<-entered
	cl.Close()
	close(release)
	if err := <-dialErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v, want net.ErrClosed", err)
	}
	if st := cl.Stats(target(srv).Key); st != (PoolStats{}) {
		t.Errorf("pool after Close: %+v, want empty", st)
	}
	if _, err := cl.Dial(ctx, target(srv)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial on a closed client: %v, want net.ErrClosed", err)
	}
}

// TestRefusedConnNotPickedAgain: the server counts a stream until its Handler returns, the client
// until Close, so a tunnel opened right after one closed may be refused (REFUSED_STREAM). Dial
// then does not pick the same connection again: it opens another and succeeds.
func TestRefusedConnNotPickedAgain(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxConcurrentStreams = 1
	handlerEnd := make(chan struct{})
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		if _, err := req.Accept(); err != nil {
			return err
		}
		<-ctx.Done()
		<-handlerEnd // closing the upstream and the like: the slot stays taken
		return nil
	}))
	defer close(handlerEnd)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	c1 := mustDial(t, cl, target(srv))
	c1.Close()
	c2 := mustDial(t, cl, target(srv))
	defer c2.Close()
	if st := cl.Stats(target(srv).Key); st.Conns != 2 || st.Streams != 1 {
		t.Errorf("pool %+v, want the refusing connection and a new one with the tunnel", st)
	}
}

// TestStreamIDExhaustion: a pooled connection near the end of its stream IDs leaves the pool and
// is shut down gracefully: Dial uses a new connection, and the old one's tunnels run on.
func TestStreamIDExhaustion(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	c1 := mustDial(t, cl, target(srv)) // keeps the old connection open
	defer c1.Close()
	cl.mu.Lock()
	for _, pc := range cl.pools[target(srv).Key].conns {
		pc.cc.mu.Lock()
		pc.cc.nextID = maxStreamID - 2 // as after 2^30 streams
		pc.cc.mu.Unlock()
	}
	cl.mu.Unlock()
	for range 2 {
		c := mustDial(t, cl, target(srv))
		c.Close()
	}
	if st := cl.Stats(target(srv).Key); st.Conns != 1 {
		t.Errorf("pool %+v, want only the new connection", st)
	}
	// The old connection's tunnel still works, then the connection closes after it.
	if _, err := c1.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c1, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo on the old connection: %q, %v", buf, err)
	}
	c1.Close()
	testutil.Eventually(t, testTimeout(), "one TCP connection left open", func() bool { return srv.openTCP() == 1 })
}
