package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Conn is one tunnel: a full-duplex byte stream. CloseWrite half-closes it: the peer reads end of
// stream while this side can still read.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// stream is one end of a tunnel, client or server: an HTTP/2 stream carrying bytes both ways.
type stream struct {
	c             *h2conn
	id            uint32
	local, remote net.Addr

	wmu sync.Mutex // one Write at a time, so that concurrent writes do not interleave

	// Server: the Handler's context, cancelled when the stream ends.
	ctx    context.Context
	cancel context.CancelFunc
	// onClose runs once, at Close (the client gives the stream back to its pool).
	onClose   func()
	closeOnce sync.Once

	// Guarded by c.mu.
	rcond          sync.Cond
	chunks         []*chunk // received bytes no Read has taken yet, in order
	recvLen        int
	waitBuf        []byte // a waiting Read's buffer, for the reader goroutine to fill directly
	waitN          int    // bytes the reader goroutine put in waitBuf
	filling        bool   // the reader goroutine is writing into waitBuf outside the lock
	waitReady      bool   // a waitReadable waits, with no buffer: wake it when data is appended
	recvDone       bool   // the peer's END_STREAM arrived
	recvWindow     int32
	recvUnacked    int32
	sendWindow     int64
	sendDone       bool // no more writes: CloseWrite or Close
	sendEnded      bool // our END_STREAM is on the wire
	reset          bool // RST_STREAM sent or received, or the connection ended
	wireClosed     bool // closed on the wire; no longer in c.streams
	rerr, werr     error
	status         int  // client: the response status, 0 until it arrives
	handlerRunning bool // server
	closed         bool
	reading        bool // a Read is under way
	readQueue      int  // Reads waiting for it
	rtimer, wtimer *time.Timer
}

var _ Conn = (*stream)(nil)

// newStreamLocked makes stream id and registers it. Called with c.mu held.
func (c *h2conn) newStreamLocked(id uint32) *stream {
	s := &stream{
		c: c, id: id,
		local: c.nc.LocalAddr(), remote: c.nc.RemoteAddr(),
		recvWindow: c.flow.streamWindow(),
		sendWindow: int64(c.peerInitWindow),
	}
	s.rcond.L = &c.mu
	c.streams[id] = s
	return s
}

// Stale reports whether c, a tunnel of this package, has heard from its peer while nobody read
// it: bytes, its end (END_STREAM, RST_STREAM) or its connection's end. An idle HTTP/1.1
// connection in that state will not answer another request (its server closed it, or broke the
// protocol). Conns of other kinds are never stale.
func Stale(c net.Conn) bool {
	s, ok := c.(*stream)
	if !ok {
		return false
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.recvLen > 0 || s.recvDone || s.rerr != nil || s.reset || s.c.err != nil
}

// Read returns received bytes, then io.EOF after the peer's END_STREAM.
func (s *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	c.mu.Lock()
	s.beginReadLocked()
	for {
		if s.waitN > 0 {
			n := s.waitN
			s.waitN = 0
			return s.consumed(n)
		}
		if s.filling {
			s.rcond.Wait()
			continue
		}
		s.waitBuf = nil
		if s.recvLen > 0 && s.rerr == nil {
			return s.consumed(s.readChunksLocked(p))
		}
		if s.rerr != nil {
			return s.endRead(0, s.rerr)
		}
		if s.recvDone {
			return s.endRead(0, io.EOF)
		}
		if c.err != nil {
			return s.endRead(0, c.err)
		}
		s.waitBuf = p
		if c.tHeld {
			c.waitTurnLocked(s)
			continue
		}
		// Nobody reads the socket: read it here, straight into p when our data comes first.
		c.takeTokenLocked(s, true)
		err := c.readFramesLocked(func() bool {
			return s.waitN > 0 || s.recvLen > 0 || s.recvDone || s.rerr != nil
		})
		c.releaseTokenLocked(s.waitN > 0 || s.recvLen > 0)
		if err != nil {
			c.mu.Unlock()
			c.readFailed(err)
			c.mu.Lock()
		}
	}
}

// beginReadLocked waits for the Read under way to end, then marks one under way: one Read (or
// waitReadable) at a time, as a waiting Read lends its buffer to whoever reads the socket. Called
// with c.mu held; endRead ends it.
func (s *stream) beginReadLocked() {
	for s.reading {
		s.readQueue++
		s.rcond.Wait()
		s.readQueue--
	}
	s.reading = true
}

// waitReadable blocks until a Read would return at once (data, the end, an error), lending no
// buffer meanwhile: what arrives waits in pooled chunks. Copy uses it so that an idle tunnel's
// relay holds no buffer (one Read at a time, as for Read).
func (s *stream) waitReadable() {
	c := s.c
	c.mu.Lock()
	s.beginReadLocked()
	ready := func() bool { return s.recvLen > 0 || s.rerr != nil || s.recvDone || c.err != nil }
	for !ready() {
		s.waitReady = true
		if c.tHeld {
			c.waitTurnLocked(s)
			continue
		}
		// Nobody reads the socket: read it here (waitBuf is nil: no frame is read into a buffer).
		c.takeTokenLocked(s, true)
		err := c.readFramesLocked(func() bool { return s.recvLen > 0 || s.recvDone || s.rerr != nil })
		c.releaseTokenLocked(s.recvLen > 0)
		if err != nil {
			c.mu.Unlock()
			c.readFailed(err)
			c.mu.Lock()
		}
	}
	s.waitReady = false
	s.endRead(0, nil)
}

// consumed credits n read bytes to flow control and returns them from Read. Called with c.mu
// held; unlocks it.
func (s *stream) consumed(n int) (int, error) {
	s.c.consumedLocked(s, n)
	return s.endRead(n, nil)
}

// endRead ends a Read: called with c.mu held; unlocks it.
func (s *stream) endRead(n int, err error) (int, error) {
	c := s.c
	s.reading = false
	if s.readQueue > 0 {
		s.rcond.Broadcast()
	}
	c.mu.Unlock()
	c.flushCtrl()
	return n, err
}

// Write sends p as DATA frames as the flow-control windows allow, written by this goroutine: no
// copy beyond the frame encoding, no hand-off, no allocation.
func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for s.werr == nil && !s.sendDone && (s.sendWindow <= 0 || c.sendWindow <= 0) && c.err == nil {
			if c.tHeld {
				c.winWaiters++
				c.wcond.Wait()
				c.winWaiters--
				if !c.tHeld && (s.werr != nil || s.sendDone || (s.sendWindow > 0 && c.sendWindow > 0) || c.err != nil) {
					// Woken to take the free token but no longer waiting: the next one must.
					c.passTokenLocked(true)
				}
				continue
			}
			// Nobody reads the socket: read it here until a WINDOW_UPDATE lets us go on.
			c.takeTokenLocked(s, false)
			err := c.readFramesLocked(func() bool {
				return s.werr != nil || s.sendDone || (s.sendWindow > 0 && c.sendWindow > 0)
			})
			c.releaseTokenLocked(false)
			if err != nil {
				c.mu.Unlock()
				c.readFailed(err)
				c.mu.Lock()
			}
		}
		if err := s.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return written, err
		}
		n := int(min(int64(len(p)), maxWriteBurst, s.sendWindow, c.sendWindow))
		s.sendWindow -= int64(n)
		c.sendWindow -= int64(n)
		maxFrame := int(c.peerMaxFrame)
		c.mu.Unlock()
		if err := c.writeData(s, p[:n], maxFrame); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
		if len(p) > 0 && c.wmuWaiting.Load() > 0 {
			// Other streams wait for the write lock, just woken by its release: let them take
			// it before this Write's next burst, so that streams take turns (maxWriteBurst).
			runtime.Gosched()
		}
	}
	return written, nil
}

// sendErrLocked says why s may not send DATA (end unset) or its END_STREAM (end set) now.
func (s *stream) sendErrLocked(end bool) error {
	if s.sendEnded || s.reset {
		if s.werr != nil {
			return s.werr
		}
		return net.ErrClosed
	}
	if !end {
		return s.werr
	}
	return nil
}

func (s *stream) writeErrLocked() error {
	if s.werr != nil {
		return s.werr
	}
	if s.sendDone {
		return net.ErrClosed
	}
	return nil
}

// CloseWrite sends END_STREAM: the peer reads end of stream, and this end keeps reading.
func (s *stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.endSend()
}

// endSend sends END_STREAM unless sending has ended already. On a stream that can no longer
// send (reset, closed, past its deadline) it returns why, as shutdown(2) does on a reset socket;
// not after the peer's "stop sending" (RST_STREAM NO_ERROR after its END_STREAM), an orderly
// end that asked for just this.
func (s *stream) endSend() error {
	c := s.c
	c.mu.Lock()
	if s.werr != nil {
		err := s.werr
		c.mu.Unlock()
		if err == (resetError{http2.ErrCodeNo}) {
			return nil
		}
		return err
	}
	if s.sendDone {
		c.mu.Unlock()
		return nil
	}
	s.sendDone = true
	c.wcond.Broadcast()
	c.mu.Unlock()
	return c.writeEnd(s, true)
}

// Close ends the tunnel. A client resets a stream that is still open (RST_STREAM CANCEL). A
// server ends it in order, as a TCP close would: END_STREAM after what was written, then, if the
// client is still sending, RST_STREAM NO_ERROR ("stop sending", RFC 9113 §8.1). Reads and
// writes after Close fail with net.ErrClosed.
func (s *stream) Close() error {
	s.closeOnce.Do(func() {
		c := s.c
		if c.server {
			s.endSendOnClose()
		}
		c.mu.Lock()
		s.closed = true
		stopTimer(s.rtimer)
		stopTimer(s.wtimer)
		code := http2.ErrCodeCancel
		if c.server {
			code = http2.ErrCodeNo
		}
		if !s.wireClosed {
			c.resetLocked(s, code, net.ErrClosed, true)
		} else {
			s.failLocked(net.ErrClosed)
		}
		c.mu.Unlock()
		c.flushCtrl()
		if s.onClose != nil {
			s.onClose()
		}
	})
	return nil
}

// endSendOnClose sends a server's END_STREAM at Close. It does not wait for a Write in progress,
// which Close must be able to interrupt, nor for another writer that holds the write lock.
func (s *stream) endSendOnClose() {
	c := s.c
	c.mu.Lock()
	if s.sendDone || s.werr != nil {
		c.mu.Unlock()
		return
	}
	s.sendDone = true
	s.werr = net.ErrClosed
	c.abortWritersLocked() // a Write of s waiting for the write lock gives up
	c.mu.Unlock()
	c.writeEnd(s, false)
}

// failLocked makes reads and writes return err (keeping an earlier error) and drops what was
// received and not read, returning those bytes to the connection window: the peer counted them
// as sent, and a long-lived connection must not lose window to every stream reset with unread
// data. Callers flush the queued WINDOW_UPDATE (flushCtrl) after unlocking.
func (s *stream) failLocked(err error) {
	if s.rerr == nil {
		s.rerr = err
	}
	if s.werr == nil {
		s.werr = err
	}
	s.dropChunksLocked()
	s.c.wakeLocked(s)
	s.c.interruptLocked(s)
}

func (s *stream) LocalAddr() net.Addr  { return s.local }
func (s *stream) RemoteAddr() net.Addr { return s.remote }

// Deadlines: a stream cannot abandon a blocked Read or Write and stay in a known state with its
// peer, so a deadline that passes resets the stream (RST_STREAM CANCEL), and the blocked and
// later calls fail with os.ErrDeadlineExceeded. A deadline moved or cleared before it passes has
// no effect.
func (s *stream) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}
func (s *stream) SetReadDeadline(t time.Time) error  { return s.setDeadline(&s.rtimer, t) }
func (s *stream) SetWriteDeadline(t time.Time) error { return s.setDeadline(&s.wtimer, t) }

func (s *stream) setDeadline(timer **time.Timer, t time.Time) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closed || (s.wireClosed && s.rerr != nil && s.rerr != os.ErrDeadlineExceeded) {
		return net.ErrClosed
	}
	if s.rerr == os.ErrDeadlineExceeded {
		return os.ErrDeadlineExceeded
	}
	stopTimer(*timer)
	*timer = nil
	if t.IsZero() {
		return nil
	}
	*timer = time.AfterFunc(time.Until(t), s.onDeadline)
	return nil
}

func (s *stream) onDeadline() {
	c := s.c
	c.mu.Lock()
	if !s.closed {
		c.resetLocked(s, http2.ErrCodeCancel, os.ErrDeadlineExceeded, true)
		// An ended stream still reports the deadline to its next calls.
		s.rerr, s.werr = os.ErrDeadlineExceeded, os.ErrDeadlineExceeded
	}
	c.mu.Unlock()
	c.flushCtrl()
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// respond sends a response HEADERS (server).
func (s *stream) respond(status int, end bool) error {
	c := s.c
	// Behind a stuck writer it gives up when the client resets the stream or the connection ends.
	if err := c.lockStreamWrite(s, false, end); err != nil {
		if end {
			c.mu.Lock()
			c.maybeCloseLocked(s)
			c.mu.Unlock()
		}
		return err
	}
	c.mu.Lock()
	err := s.writeErrLocked()
	if err == nil && end {
		s.sendDone = true
	}
	c.mu.Unlock()
	if err == nil {
		err = c.writeHeadersLocked(s.id, []hpack.HeaderField{statusField(status)}, end)
	}
	err = c.endWrite(err)
	if end {
		c.mu.Lock()
		s.sendEnded = err == nil
		c.maybeCloseLocked(s)
		c.mu.Unlock()
	}
	return err
}

// Received bytes wait in chunks from a pool: an idle stream holds none, and a busy one holds
// what its window lets the peer send ahead of the reader.
const chunkSize = 16 << 10

type chunk struct {
	b    [chunkSize]byte
	r, w int
}

var chunkPool = sync.Pool{New: func() any { return new(chunk) }}

func (s *stream) appendLocked(p []byte) {
	for len(p) > 0 {
		var t *chunk
		if n := len(s.chunks); n > 0 && s.chunks[n-1].w < chunkSize {
			t = s.chunks[n-1]
		} else {
			t = chunkPool.Get().(*chunk)
			t.r, t.w = 0, 0
			s.chunks = append(s.chunks, t)
		}
		m := copy(t.b[t.w:], p)
		t.w += m
		s.recvLen += m
		p = p[m:]
	}
}

func (s *stream) readChunksLocked(p []byte) int {
	n := 0
	for n < len(p) && len(s.chunks) > 0 {
		h := s.chunks[0]
		m := copy(p[n:], h.b[h.r:h.w])
		h.r += m
		n += m
		if h.r == h.w {
			chunkPool.Put(h)
			copy(s.chunks, s.chunks[1:])
			s.chunks[len(s.chunks)-1] = nil
			s.chunks = s.chunks[:len(s.chunks)-1]
		}
	}
	s.recvLen -= n
	return n
}

func (s *stream) dropChunksLocked() {
	if s.recvLen > 0 {
		s.c.consumedLocked(nil, s.recvLen)
	}
	for i, h := range s.chunks {
		chunkPool.Put(h)
		s.chunks[i] = nil
	}
	s.chunks = s.chunks[:0]
	s.recvLen = 0
}
