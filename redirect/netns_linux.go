package redirect

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// NetNSCookie returns the kernel's cookie of the network namespace at path (an nsfs file such
// as /proc/<pid>/ns/net or /run/netns/<name>): the identity the programs key namespaces by.
func NetNSCookie(path string) (uint64, error) {
	ns, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer ns.Close()
	return netnsCookieFD(int(ns.Fd()))
}

// netnsCookieFD reads the cookie through SO_NETNS_COOKIE of a socket created inside the
// namespace, on a thread that enters it and leaves again.
func netnsCookieFD(nsFD int) (uint64, error) {
	var cookie uint64
	err := inNetNS(nsFD, func() error {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		cookie, err = unix.GetsockoptUint64(s, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return cookie, nil
}

// InNetNS runs fn on an OS thread that has joined the network namespace nsFD, and returns what
// fn returns: the sockets fn creates live in that namespace. The thread is a fresh goroutine's,
// so the caller's thread never changes namespace; should returning to the original namespace
// fail, the thread stays locked and the runtime ends it with the goroutine instead of reusing a
// thread in the wrong namespace. The node agent, ztunnel and their tests share it.
func InNetNS[T any](nsFD int, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			r.err = err
			done <- r
			return
		}
		defer orig.Close()
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("setns: %w", err)
			done <- r
			return
		}
		r.v, r.err = fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			r.err = errors.Join(r.err, fmt.Errorf("restore netns: %w", err))
		} else {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	return r.v, r.err
}

// inNetNS is InNetNS for a fn that returns only an error.
func inNetNS(nsFD int, fn func() error) error {
	_, err := InNetNS(nsFD, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// socketNetNSCookie returns the cookie of the network namespace a socket lives in.
func socketNetNSCookie(fd int) (uint64, error) {
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}
