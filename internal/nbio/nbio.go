// Package nbio reads and writes the runtime's non-blocking sockets with raw system calls.
//
// Why: a read or write through net.Conn enters the kernel by way of the scheduler's system-call
// bookkeeping (entersyscall). On a proxy that goes idle between requests, that bookkeeping is most
// of what the Go runtime costs: the first system call after an idle spell wakes the system
// monitor thread, which then polls every 20 µs, and a write that carries a loopback or veth
// packet through the peer's receive path in the same call (20–50 µs) has its P taken away and
// handed to another thread. Each of those is a futex and a context switch. A socket the poller
// owns is non-blocking, so its read or write never sleeps in the kernel, and none of that is
// needed: the waypoint spent a fifth of its CPU in the system monitor at 1000 requests a second.
//
// Rules:
//   - Only sockets owned by the runtime's poller (net.TCPConn, net.UnixConn): they are
//     non-blocking by construction, which is what makes a raw call safe. Anything else keeps the
//     ordinary path (New returns nil).
//   - Waiting stays with the poller (syscall.RawConn): deadlines, Close waking a blocked reader and
//     the descriptor's read and write locks all behave as they do for net.Conn.
//   - Errors look like net.Conn's: *net.OpError with Op "read" or "write", io.EOF at end of stream.
//
// What it gives up: the system monitor, asleep while every P is idle, is no longer woken by these
// calls (it still is by any other system call, a garbage collection or a timer). Its jobs while
// it sleeps are preempting a goroutine that runs over 10 ms and polling the network when no P
// does; the proxies' goroutines between two socket calls run for microseconds, so neither is
// missed. Code that computes for long stretches should not rely on this package's callers to keep
// the monitor awake.
package nbio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// maxRW bounds one system call, as internal/poll does, so that a huge buffer is written in
// pieces rather than refused.
const maxRW = 1 << 30

// Socket reads and writes one connection's descriptor with raw system calls.
type Socket struct {
	c  net.Conn
	rc syscall.RawConn
}

// New returns a Socket for c, or nil when c is not a socket the runtime's poller owns.
func New(c net.Conn) *Socket {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	return &Socket{c: c, rc: rc}
}

// Read reads into p what the socket holds, waiting on the poller while it holds nothing.
func (s *Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	var n int
	var errno syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		n, errno = ReadFD(fd, p)
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, s.opError("read", unwrapOp(err))
	case errno != 0:
		return 0, s.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting on the poller while the socket's send buffer is full.
func (s *Socket) Write(p []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			chunk := p[n:]
			if len(chunk) > maxRW {
				chunk = chunk[:maxRW]
			}
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&chunk[0])), uintptr(len(chunk)))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, s.opError("write", unwrapOp(err))
	case errno != 0:
		return n, s.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// ReadFD is one read(2) of the non-blocking descriptor fd into p (not empty), retried when a
// signal interrupts it, for a syscall.RawConn.Read callback: EAGAIN means wait on the poller.
func ReadFD(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != syscall.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(r), 0
		}
	}
}

// opError wraps err as net.Conn's own methods do, so that callers and logs see "read tcp a->b: …".
func (s *Socket) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: s.c.LocalAddr().Network(), Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: err}
}

// unwrapOp takes the cause out of the *net.OpError that RawConn returns ("raw-read …"): a
// deadline (os.ErrDeadlineExceeded) or the connection closing (net.ErrClosed).
func unwrapOp(err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Err
	}
	return err
}
