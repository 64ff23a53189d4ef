package lab

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialInNetns opens a TCP connection from inside the named network namespace (a node's, say),
// so that a test process on the host can reach pod addresses exactly as that node does. Only the
// socket is created there: once created, a socket stays in its namespace whatever thread uses it.
func DialInNetns(ctx context.Context, netns, addr string) (net.Conn, error) {
	var c net.Conn
	err := withNetns(netns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// ListenInNetns opens a TCP listener inside the named network namespace, so that pods can reach
// a server the test process runs (at a node's address, say) as they reach that node.
func ListenInNetns(netns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := withNetns(netns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// withNetns runs fn on a thread of its own that is in the named network namespace.
func withNetns(netns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is locked and never unlocked if restoring fails, so the runtime discards it
		// rather than letting other goroutines run in the wrong namespace.
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", netns, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", netns, err)
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
