package hbone

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Conn is one tunnel: a full-duplex byte stream. CloseWrite half-closes it: the peer reads end of
// stream while this side can still read.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// serverStream is the server's end of a tunnel: the request body in, the response body out.
type serverStream struct {
	body          io.ReadCloser
	w             http.ResponseWriter
	rc            *http.ResponseController
	local, remote net.Addr

	// mu orders writes against the handler's return: x/net panics on a Write to a
	// ResponseWriter whose handler has returned.
	mu          sync.Mutex
	writeClosed bool
	finished    bool

	ended   chan struct{} // closed at CloseWrite or Close: the server ends the stream
	endOnce sync.Once
}

var _ Conn = (*serverStream)(nil)

func (s *serverStream) Read(p []byte) (int, error) { return s.body.Read(p) }

// Write sends p and flushes, so that a relay's bytes leave at once; x/net buffers 4 KiB
// otherwise. Writes of 4 KiB or more bypass that buffer without copying.
func (s *serverStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.writeClosed {
		return 0, net.ErrClosed
	}
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

// CloseWrite flushes and ends the server's side of the stream: the client reads end of stream.
// x/net/http2's server cannot keep reading a stream it has ended, so this ends reads too (see
// README.md, Known limits).
func (s *serverStream) CloseWrite() error {
	s.mu.Lock()
	var err error
	if !s.writeClosed && !s.finished {
		s.writeClosed = true
		err = s.rc.Flush()
	}
	s.mu.Unlock()
	s.end()
	return err
}

// Close ends the stream both ways.
func (s *serverStream) Close() error {
	s.mu.Lock()
	s.writeClosed = true
	s.mu.Unlock()
	err := s.body.Close()
	s.end()
	return err
}

func (s *serverStream) end() { s.endOnce.Do(func() { close(s.ended) }) }

func (s *serverStream) finish() {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
}

func (s *serverStream) LocalAddr() net.Addr  { return s.local }
func (s *serverStream) RemoteAddr() net.Addr { return s.remote }

func (s *serverStream) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}
func (s *serverStream) SetReadDeadline(t time.Time) error {
	return s.withWriter(func() error { return s.rc.SetReadDeadline(t) })
}
func (s *serverStream) SetWriteDeadline(t time.Time) error {
	return s.withWriter(func() error { return s.rc.SetWriteDeadline(t) })
}

// withWriter runs f unless the stream has ended: x/net panics on any use of a ResponseWriter
// after its handler returned.
func (s *serverStream) withWriter(f func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return net.ErrClosed
	}
	return f()
}

// tunnel is the client's end: writes go into the request body through a pipe, reads come from the
// response body.
type tunnel struct {
	body          io.ReadCloser  // response body
	pw            *io.PipeWriter // request body
	local, remote net.Addr
	release       func() // gives the stream back to the pool; called once

	closeOnce sync.Once

	mu            sync.Mutex
	readTimer     *time.Timer
	writeTimer    *time.Timer
	deadlineFired bool
}

var _ Conn = (*tunnel)(nil)

func (t *tunnel) Read(p []byte) (int, error) {
	n, err := t.body.Read(p)
	if err != nil && err != io.EOF && t.expired() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

// frameData is the DATA payload that, with its 9-byte frame header, fills one TLS record
// (16 KiB of plaintext). The transport sends one frame per read of the request body, so feeding it
// this much at a time makes every frame one record and one write; a 16 KiB payload would be a full
// record plus a 9-byte one, two writes.
const frameData = 16<<10 - 9

// Write hands p to x/net's request body writer through a synchronous pipe: no copy here and no
// allocation; the transport copies into its frame buffer.
func (t *tunnel) Write(p []byte) (int, error) {
	var written int
	for len(p) > 0 {
		chunk := p[:min(len(p), frameData)]
		n, err := t.pw.Write(chunk)
		written += n
		if err != nil {
			if t.expired() {
				err = os.ErrDeadlineExceeded
			}
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// CloseWrite ends the request body: the server reads end of stream; responses keep coming.
func (t *tunnel) CloseWrite() error { return t.pw.Close() }

// Close resets the stream if it is still open and returns it to the pool.
func (t *tunnel) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		stopTimer(t.readTimer)
		stopTimer(t.writeTimer)
		t.mu.Unlock()
		t.pw.CloseWithError(net.ErrClosed)
		t.body.Close()
		t.release()
	})
	return nil
}

func (t *tunnel) LocalAddr() net.Addr  { return t.local }
func (t *tunnel) RemoteAddr() net.Addr { return t.remote }

// Deadlines: an HTTP/2 stream cannot abandon a blocked Read or Write and stay usable, so a deadline
// that passes ends the tunnel, and the blocked and later calls fail with os.ErrDeadlineExceeded.
// A deadline moved or cleared before it passes has no effect.
func (t *tunnel) SetDeadline(d time.Time) error {
	return errors.Join(t.SetReadDeadline(d), t.SetWriteDeadline(d))
}
func (t *tunnel) SetReadDeadline(d time.Time) error  { return t.setDeadline(&t.readTimer, d) }
func (t *tunnel) SetWriteDeadline(d time.Time) error { return t.setDeadline(&t.writeTimer, d) }

func (t *tunnel) setDeadline(timer **time.Timer, d time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deadlineFired {
		return os.ErrDeadlineExceeded
	}
	stopTimer(*timer)
	*timer = nil
	if d.IsZero() {
		return nil
	}
	*timer = time.AfterFunc(time.Until(d), t.onDeadline)
	return nil
}

func (t *tunnel) onDeadline() {
	t.mu.Lock()
	t.deadlineFired = true
	t.mu.Unlock()
	t.pw.CloseWithError(os.ErrDeadlineExceeded)
	t.body.Close()
}

func (t *tunnel) expired() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deadlineFired
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}
