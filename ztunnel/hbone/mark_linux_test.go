package hbone

import (
	"context"
	"errors"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// requireNetAdmin skips without the privilege a real-kernel test needs, and fails instead in CI,
// where it must run.
func requireNetAdmin(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.SkipOrFail(t, "needs root (CAP_NET_ADMIN) to set SO_MARK")
	}
}

func TestMarkedDialer(t *testing.T) {
	requireNetAdmin(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := MarkedDialer(mesh.SocketMark)(context.Background(), addrOf(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	if err := rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(gerr); err != nil {
		t.Fatal(err)
	}
	if mark != mesh.SocketMark {
		t.Errorf("SO_MARK = %#x, want %#x", mark, mesh.SocketMark)
	}
}
