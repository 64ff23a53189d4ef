package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// relayBufSize is two TLS records: a read rarely returns more, and larger buffers would only
// raise the memory a busy relay holds.
const relayBufSize = 32 << 10

// relayBufs holds relay buffers. Pointers to arrays avoid the allocation sync.Pool makes when a
// slice header is boxed into an interface.
var relayBufs = sync.Pool{New: func() any { return new([relayBufSize]byte) }}

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

// Copy copies src to dst until src ends, through a pooled buffer; it does not allocate. Unlike
// io.Copy it never hands over to ReaderFrom or WriterTo, whose buffers are not pooled.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	buf := relayBufs.Get().(*[relayBufSize]byte)
	defer relayBufs.Put(buf)
	var written int64
	for {
		nr, rerr := src.Read(buf[:])
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if nw != nr {
				return written, io.ErrShortWrite
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
