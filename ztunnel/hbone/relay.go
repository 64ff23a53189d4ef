package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ambient-mesh/ambient/internal/nbio"
)

// relayBufSize is two TLS records: a read rarely returns more, and larger buffers would only
// raise the memory a busy relay holds.
const relayBufSize = 32 << 10

// relayBufs holds relay buffers. Pointers to arrays avoid the allocation sync.Pool makes when a
// slice header is boxed into an interface.
var relayBufs = sync.Pool{New: func() any { return new([relayBufSize]byte) }}

// relayBufsOut counts the relay buffers taken and not yet given back.
var relayBufsOut atomic.Int64

func getRelayBuf() *[relayBufSize]byte {
	relayBufsOut.Add(1)
	return relayBufs.Get().(*[relayBufSize]byte)
}

func putRelayBuf(b *[relayBufSize]byte) {
	relayBufsOut.Add(-1)
	relayBufs.Put(b)
}

// Relay copies a to b and b to a until both directions have ended. When one source ends, the
// matching destination is half-closed (CloseWrite) so the end reaches the other side, and the other
// direction keeps flowing. It returns the bytes copied each way and the first error other than an
// orderly end; both a and b are closed when it returns. Steady-state copying does not allocate.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errAB error
	wg.Go(func() {
		aToB, errAB = copyHalf(b, a)
		if errAB != nil {
			// Unblock the other direction: without a clean end it cannot finish on its own.
			a.Close()
			b.Close()
		}
	})
	bToA, err = copyHalf(a, b)
	if err != nil {
		a.Close()
		b.Close()
	}
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(errAB, err)
}

// copyHalf copies src to dst with a pooled buffer and half-closes dst at src's end.
func copyHalf(dst, src net.Conn) (int64, error) {
	n, err := Copy(dst, src)
	if err != nil {
		return n, err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return n, err
		}
		return n, nil
	}
	return n, dst.Close()
}

// Copy copies src to dst until src ends, through a pooled buffer; past its start (a socket's raw
// I/O handle) it does not allocate. Unlike io.Copy it never hands over to ReaderFrom or WriterTo,
// whose buffers are not pooled. From a TCP socket or a tunnel it holds the buffer only while
// there is data to move: neither side of an idle connection costs a buffer.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	if c, ok := dst.(*net.TCPConn); ok {
		if s := nbio.New(c); s != nil {
			dst = s // a socket is written without the scheduler's system-call bookkeeping
		}
	}
	switch s := src.(type) {
	case *net.TCPConn:
		if sock := nbio.New(s); sock != nil {
			return copyFromSocket(dst, sock.RawConn())
		}
	case *stream:
		return copyFromStream(dst, s)
	}
	buf := getRelayBuf()
	defer putRelayBuf(buf)
	var written int64
	for {
		nr, rerr := src.Read(buf[:])
		if nr > 0 {
			nw, werr := writeAll(dst, buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// copyFromStream is Copy from a tunnel: it waits for data with no buffer (waitReadable), then
// takes one for the Read and the write that follows.
func copyFromStream(dst io.Writer, s *stream) (int64, error) {
	var written int64
	for {
		s.waitReadable()
		buf := getRelayBuf()
		nr, rerr := s.Read(buf[:])
		var werr error
		if nr > 0 {
			var nw int
			nw, werr = writeAll(dst, buf[:nr])
			written += int64(nw)
		}
		putRelayBuf(buf)
		switch {
		case werr != nil:
			return written, werr
		case rerr == io.EOF:
			return written, nil
		case rerr != nil:
			return written, rerr
		}
	}
}

// copyFromSocket is Copy from a socket read through its raw fd: a read that would block gives
// the buffer back to the pool before the goroutine parks on the poller, and the next one takes a
// buffer when the socket is readable. Deadlines and Close interrupt the wait as they do Read.
func copyFromSocket(dst io.Writer, rc syscall.RawConn) (int64, error) {
	var buf *[relayBufSize]byte
	defer func() {
		if buf != nil {
			putRelayBuf(buf)
		}
	}()
	var written int64
	for {
		var nr int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = getRelayBuf()
			}
			var errno syscall.Errno
			nr, errno = nbio.ReadFD(fd, buf[:])
			if errno == syscall.EAGAIN {
				putRelayBuf(buf)
				buf = nil
				return false // park until readable, holding nothing
			}
			if errno != 0 {
				rerr = errno
			}
			return true
		})
		if err != nil {
			return written, err // a deadline, or the connection closed under us
		}
		if rerr != nil {
			return written, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", rerr)}
		}
		if nr == 0 {
			return written, nil // the peer's FIN
		}
		nw, werr := writeAll(dst, buf[:nr])
		written += int64(nw)
		if werr != nil {
			return written, werr
		}
	}
}

// writeAll writes p to dst; a short write without an error is io.ErrShortWrite.
func writeAll(dst io.Writer, p []byte) (int, error) {
	n, err := dst.Write(p)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}
