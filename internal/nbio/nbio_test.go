package nbio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); s.Close() })
	return d.(*net.TCPConn), s.(*net.TCPConn)
}

func TestNewOnlyForPollerSockets(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if New(p) != nil {
		t.Error("New(net.Pipe()) is not nil: a pipe is not a descriptor")
	}
	a, b := pair(t)
	if New(a) == nil {
		t.Error("New(*net.TCPConn) is nil")
	}
	// A socket made blocking (as File and Fd do) would block a raw call with its P held.
	rc, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { err = syscall.SetNonblock(int(fd), false) }); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if New(b) != nil {
		t.Error("New of a blocking socket is not nil")
	}
}

// A write bigger than both socket buffers completes while the peer reads it, waiting on the
// poller when the buffer is full, and the reader sees every byte in order, then io.EOF.
func TestRoundTripLargerThanBuffers(t *testing.T) {
	a, b := pair(t)
	w, r := New(a), New(b)
	want := make([]byte, 32<<20) // more than the kernel lets one socket buffer: the writer waits

	for i := range want {
		want[i] = byte(i * 7)
	}
	done := make(chan error, 1)
	go func() {
		n, err := w.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = a.CloseWrite()
		}
		done <- err
	}()
	var got bytes.Buffer
	buf := make([]byte, 3000)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got.Len(), err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not the %d written", got.Len(), len(want))
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	a, _ := pair(t)
	s := New(a)
	if err := a.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	_, err := s.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil {
		t.Errorf("error %#v is not net.Conn's read error", err)
	}
	if err := a.SetWriteDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("write past the deadline: %v", err)
	}
}

// Closing the connection ends a read that waits on the poller, as for net.Conn.
func TestCloseEndsRead(t *testing.T) {
	a, _ := pair(t)
	s := New(a)
	res := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		res <- err
	}()
	a.Close()
	if err := <-res; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v; want net.ErrClosed", err)
	}
}

// An error from the kernel comes back as net.Conn's would: an *os.SyscallError in a *net.OpError.
func TestWriteToResetPeer(t *testing.T) {
	a, b := pair(t)
	if err := b.SetLinger(0); err != nil { // close with RST
		t.Fatal(err)
	}
	b.Close()
	s := New(a)
	var err error
	for range 100 { // the RST may land after the first writes
		if _, err = s.Write(make([]byte, 1<<10)); err != nil {
			break
		}
		if _, err = s.Read(make([]byte, 1)); err != nil && err != io.EOF {
			break
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a reset peer: %v; want ECONNRESET or EPIPE", err)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) {
		t.Errorf("error %#v has no *os.SyscallError", err)
	}
}
