package redirect

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Blackhole opens, inside the namespace at nsPath, a listening TCP socket whose socket filter
// drops every packet, and registers it as the namespace's ListenerBlackhole: while no proxy
// listener is registered, inbound SYNs are then dropped silently (the client retries) instead
// of being answered with a RST. The caller keeps it open as long as the namespace is enrolled;
// closing it, or the process ending, falls back to the RST, which is still fail closed.
func (r *Redirector) Blackhole(nsPath string) (io.Closer, error) {
	ns, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("blackhole in netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	var f *os.File
	var cookie uint64
	err = inNetNS(int(ns.Fd()), func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		f = os.NewFile(uintptr(fd), "blackhole")
		// Drop everything: the filter runs before TCP processes the SYN.
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		for _, step := range []func() error{
			func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0) },
			func() error {
				return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]})
			},
			func() error { return unix.Bind(fd, &unix.SockaddrInet6{}) },
			func() error { return unix.Listen(fd, 1) },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		cookie, err = socketNetNSCookie(fd)
		return err
	})
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("blackhole in netns %s: %w", nsPath, err)
	}
	if err := r.RegisterListener(cookie, ListenerBlackhole, f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
