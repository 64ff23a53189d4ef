package redirect

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// TestHandoverToProxyBeside is a ztunnel rolling update as the kernel sees it: the old proxy's
// listener holds connections it has not accepted yet, the new proxy binds beside it
// (SO_REUSEPORT) and registers, the old one closes. The queued connections must reach the new
// proxy, not be reset: AttachSKLookup turns on tcp_migrate_req in the pod's namespace. With it
// off, the same steps reset them, which shows what the setting is for.
func TestHandoverToProxyBeside(t *testing.T) {
	e := newEnv(t)
	netns := e.enrol()
	if _, err := e.r.AttachSKLookup(e.podNS); err != nil {
		t.Fatal(err)
	}
	port := ":" + itoa(mesh.PortInboundPlaintext)
	to := netip.AddrPortFrom(e.podIP, 8080)

	handover := func(t *testing.T) (migrated int, clients []net.Conn) {
		old := listenReusePort(t, e.podNS, port)
		if err := e.r.RegisterListener(netns, ListenerInbound, old); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			c, err := dialFrom(t, e.peerNS, netip.Addr{}, to, acceptTimeout)
			if err != nil {
				t.Fatalf("dial %v with the old proxy listening: %v", to, err)
			}
			t.Cleanup(func() { c.Close() })
			clients = append(clients, c)
		}
		next := listenReusePort(t, e.podNS, port)
		if err := e.r.RegisterListener(netns, ListenerInbound, next); err != nil {
			t.Fatal(err)
		}
		old.Close() // never accepted: its three connections are in its queue
		for {
			_ = next.SetDeadline(time.Now().Add(200 * time.Millisecond))
			c, err := next.Accept()
			if err != nil {
				return migrated, clients
			}
			defer c.Close()
			if got := addrPortOf(c.LocalAddr()); got != to {
				t.Errorf("new proxy accepted a connection to %v, want %v", got, to)
			}
			migrated++
		}
	}

	t.Run("migrated", func(t *testing.T) {
		if n, _ := handover(t); n != 3 {
			t.Errorf("the new proxy took %d of the 3 connections queued at the old one", n)
		}
	})
	t.Run("reset-without-migration", func(t *testing.T) {
		inNS(t, e.podNS, func() error { return os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("0"), 0) })
		n, clients := handover(t)
		if n != 0 {
			t.Fatalf("with tcp_migrate_req off the new proxy took %d connections: the test shows nothing", n)
		}
		_ = clients[0].SetReadDeadline(time.Now().Add(acceptTimeout))
		if _, err := clients[0].Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client of a closed listener's queue: read = %v, want a reset", err)
		}
	})
}

// listenReusePort listens in ns with SO_REUSEPORT, as ztunnel's in-pod listeners do, and does not
// accept.
func listenReusePort(t *testing.T, ns, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	inNS(t, ns, func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return errors.Join(err, serr)
		}}
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}
