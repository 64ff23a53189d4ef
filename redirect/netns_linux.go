package redirect

import (
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

// inNetNS runs fn on a locked OS thread that has joined the network namespace nsFD.
func inNetNS(nsFD int, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime ends it with the goroutine instead of reusing
		// a thread stuck in the wrong namespace.
		return fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// socketNetNSCookie returns the cookie of the network namespace a socket lives in.
func socketNetNSCookie(fd int) (uint64, error) {
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}
