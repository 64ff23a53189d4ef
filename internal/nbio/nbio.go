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
//   - Only TCP sockets owned by the runtime's poller, and only while non-blocking (New checks):
//     that is what makes a raw call safe, as a raw call that blocked would hold its P, and stall
//     the next garbage collection, for as long as it slept. Anything else keeps the ordinary path
//     (New returns nil). Nothing may clear O_NONBLOCK on a socket afterwards (net.TCPConn.File
//     followed by Fd does).
//   - Built with the race detector, msan or asan, the calls go through package syscall, whose
//     Read and Write tell the detectors about the buffers (sys_instrumented.go).
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
)

// maxRW bounds one system call, as internal/poll does, so that a huge buffer is written in
// pieces rather than refused.
const maxRW = 1 << 30

// Socket reads and writes one connection's descriptor with raw system calls.
type Socket struct {
	c  *net.TCPConn
	rc syscall.RawConn
}

// New returns a Socket for c, or nil when c is not a non-blocking TCP socket of the runtime's
// poller.
func New(c net.Conn) *Socket {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	nonblocking := false
	if err := rc.Control(func(fd uintptr) {
		flags, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0) // never blocks
		nonblocking = e == 0 && flags&syscall.O_NONBLOCK != 0
	}); err != nil || !nonblocking {
		return nil
	}
	return &Socket{c: tc, rc: rc}
}

// RawConn is the socket's descriptor, for reads that call ReadFD themselves (a buffer taken only
// once there is something to read).
func (s *Socket) RawConn() syscall.RawConn { return s.rc }

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
	stuck := false
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			chunk := p[n:]
			if len(chunk) > maxRW {
				chunk = chunk[:maxRW]
			}
			r, e := write(fd, chunk)
			switch {
			case e == syscall.EINTR:
			case e == syscall.EAGAIN:
				return false
			case e != 0:
				errno = e
				return true
			case r > len(chunk):
				panic("nbio: write(2) returned more than it was given") // as internal/poll, Go issue 61060
			case r == 0:
				stuck = true // no progress and no error, as internal/poll: not looping on it
				return true
			default:
				n += r
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, s.opError("write", unwrapOp(err))
	case errno != 0:
		return n, s.opError("write", os.NewSyscallError("write", errno))
	case stuck:
		return n, io.ErrUnexpectedEOF
	}
	return n, nil
}

// ReadFD is one read(2) of fd into p (not empty), retried when a signal interrupts it, for a
// callback of a Socket's RawConn().Read, whose descriptor New found non-blocking: EAGAIN means
// wait on the poller.
func ReadFD(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		if n, e := read(fd, p); e != syscall.EINTR {
			return n, e
		}
	}
}

// opError wraps err as net.Conn's own methods do, so that callers and logs see "read tcp a->b: …".
func (s *Socket) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: err}
}

// unwrapOp takes the cause out of the *net.OpError that RawConn returns ("raw-read …"): a
// deadline (os.ErrDeadlineExceeded) or the connection closing (net.ErrClosed).
func unwrapOp(err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Err
	}
	return err
}
