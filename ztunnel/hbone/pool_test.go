package hbone

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/ambient-mesh/ambient/api/identity"
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
