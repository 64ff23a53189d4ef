package hbone

// The write lock and write sessions: every frame goes out under wmu, written by the goroutine
// that has it to send (no writer goroutine). Rules kept here:
//
//   - Lock order (rule 1 in h2conn.go): wmu, then mu. A session holds wmu across socket writes
//     that block while the peer does not read, and takes mu only briefly inside (sendErrLocked,
//     the peer's settings, swapping the control queue). wdogMu and corkConn.mu are leaves.
//   - A stream's frames only while it may send (rule 4): writeData and writeEnd check
//     sendErrLocked under mu with wmu held, and writeEnd marks sendEnded before it releases
//     wmu, so that no DATA follows END_STREAM or RST_STREAM (RFC 9113 §5.1) whatever the
//     goroutines' timing. The connection window taken for DATA not written goes back.
//   - HEADERS are encoded under wmu, in the order they are written: the hpack encoder's dynamic
//     table is state shared with the peer's decoder.
//   - Waiting writers can give up: a stream's writer waits for wmu in lockWriteUnless, not in
//     wmu.Lock, so that a deadline, Close, a reset or the connection's end frees it while another
//     writer is stuck on a peer that does not read. Whatever changes a stream's write state or the
//     connection's calls abortWritersLocked, which wakes them (closing wabort) to check. A waiter
//     registers (wmuWaiting, under mu) and then tries the lock once more, so that a release
//     between its first try and its registration is not missed. Close never waits for the lock:
//     writeEnd without wait queues its END_STREAM for the holder.
//   - Fair turns: a session sends at most maxWriteBurst of one stream's DATA, unlockWrite wakes
//     the writers waiting for the lock, and a Write with more to send yields to them
//     (stream.Write), so that one bulk stream cannot keep the lock for its whole buffer.
//   - The watchdog bounds a session to PingTimeout: a peer that stopped reading would otherwise
//     hold every writer, and every Close's END_STREAM, for ever. It is a timer, not the socket's
//     write deadline, which would stay set between writes and fail TLS's own writes (its KeyUpdate
//     answer) after an idle spell. wstart and wdogAt are atomics and the watchdog disarms (wdogAt
//     0) before it reads wstart, so that a session starting meanwhile arms the timer itself.
//   - A write error ends the connection (endWrite): a frame may have been cut in half, and
//     nothing may follow it on the wire.
//   - Corking: corkConn collects a session's TLS records for one socket write. It is corked and
//     uncorked only under wmu; its own mu makes a TLS write from the reading side (an alert)
//     that comes during a flush wait for it, so records stay in order.

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-mesh/ambient/internal/nbio"
)

// beginWrite takes the write lock. With cork set, the frames written until endWrite leave in one
// socket write; without, each TLS record goes out as it is written (for a session of one small
// frame, which saves copying it once more).
func (c *h2conn) beginWrite(cork bool) {
	c.wmu.Lock()
	c.startWriteLocked(cork)
}

// tryLockWrite takes the write lock if it is free, for beginWrite's work without waiting.
func (c *h2conn) tryLockWrite() bool {
	if !c.wmu.TryLock() {
		return false
	}
	c.startWriteLocked(false)
	return true
}

// unlockWrite releases the write lock and wakes the writers waiting for it in lockStreamWrite.
func (c *h2conn) unlockWrite() {
	c.wstart.Store(0)
	c.wmu.Unlock()
	if c.wmuWaiting.Load() > 0 {
		c.mu.Lock()
		c.abortWritersLocked()
		c.mu.Unlock()
	}
}

// abortWritersLocked wakes writers waiting for window or for the write lock after a stream's
// write state or the connection's changed: each checks whether it can still write.
func (c *h2conn) abortWritersLocked() {
	c.wcond.Broadcast()
	if c.wmuWaiting.Load() > 0 {
		close(c.wabort)
		c.wabort = make(chan struct{})
	}
}

// lockStreamWrite is beginWrite for frames of s (DATA, its END_STREAM when end is set, or its
// response HEADERS): it gives up, returning why, when s can no longer send (deadline, Close,
// reset) or the connection ends while it waits behind another writer, which may be blocked on a
// peer that does not read.
func (c *h2conn) lockStreamWrite(s *stream, cork, end bool) error {
	if c.wmu.TryLock() { // the common case, without the closure below
		c.startWriteLocked(cork)
		return nil
	}
	return c.lockWriteUnless(cork, func() error { return s.sendErrLocked(end) }, nil)
}

// lockWriteUnless is beginWrite for a writer that may give up: while it waits for the write
// lock, stop (called under mu) returning an error, the connection ending, or done closing ends
// the wait with that error (for done, stop's). abortWritersLocked wakes it to check.
func (c *h2conn) lockWriteUnless(cork bool, stop func() error, done <-chan struct{}) error {
	for !c.wmu.TryLock() {
		c.mu.Lock()
		err := stop()
		if err == nil && c.err != nil {
			err = c.err
		}
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.wmuWaiting.Add(1)
		wake := c.wabort
		c.mu.Unlock()
		// Released between the TryLock and the registration: its wake-up came too early.
		if c.wmu.TryLock() {
			c.mu.Lock()
			c.wmuWaiting.Add(-1)
			c.mu.Unlock()
			break
		}
		select {
		case <-wake:
		case <-done:
		}
		c.mu.Lock()
		c.wmuWaiting.Add(-1)
		c.mu.Unlock()
	}
	c.startWriteLocked(cork)
	return nil
}

// startWriteLocked starts a write session under wmu: corked as asked or when control frames
// wait, and watched, so that a peer that stops reading cannot hold the write lock, and with it
// every stream's writes and Close, for ever: a write session that does not end within
// PingTimeout ends the connection, as an unanswered PING does.
//
// The watchdog is a timer rather than the socket's write deadline. A deadline would stay set
// between writes, and the TLS stack writes on its own from the reading side (its answer to the
// peer's KeyUpdate): after an idle spell longer than the deadline that write would fail and take
// the connection down. The timer is re-armed only when less than half of PingTimeout is left,
// which saves a timer update per write; when it fires during a younger session it re-arms for
// that session's end.
func (c *h2conn) startWriteLocked(cork bool) {
	c.setCorkLocked(cork || c.ctrlPending.Load())
	if d := int64(c.flow.PingTimeout); d > 0 {
		now := int64(time.Since(c.epoch)) + 1
		c.wstart.Store(now)
		if now+d/2 > c.wdogAt.Load() {
			c.wdogMu.Lock()
			if now+d/2 > c.wdogAt.Load() {
				c.wdogAt.Store(now + d)
				c.wdog.Reset(time.Duration(d))
			}
			c.wdogMu.Unlock()
		}
	}
}

// writeWatchdog runs when the write watchdog fires: it ends the connection if the write session
// in progress began PingTimeout ago or earlier, and re-arms for a younger one.
func (c *h2conn) writeWatchdog() {
	d := int64(c.flow.PingTimeout)
	c.wdogMu.Lock()
	// Disarmed before wstart is read: a session that stores its start after this read finds
	// wdogAt 0 and arms the timer itself (both are sequentially consistent atomics).
	c.wdogAt.Store(0)
	start := c.wstart.Load()
	now := int64(time.Since(c.epoch)) + 1
	if start == 0 || now-start < d {
		if start != 0 {
			c.wdogAt.Store(start + d)
			c.wdog.Reset(time.Duration(start + d - now))
		}
		c.wdogMu.Unlock()
		return
	}
	c.wdogMu.Unlock()
	c.fail(errWriteTimeout, http2.ErrCodeNo, false)
}

func (c *h2conn) setCorkLocked(cork bool) {
	if cork && !c.corked && c.raw != nil {
		c.raw.cork()
		c.corked = true
	}
}

// endWrite writes queued control frames, flushes and releases the write lock. A write error ends
// the connection: a frame may have been cut in half.
func (c *h2conn) endWrite(err error) error {
	if err == nil && c.ctrlPending.Load() {
		c.setCorkLocked(true)
		err = c.writeCtrlLocked()
	}
	if c.corked {
		c.corked = false
		if ferr := c.raw.uncork(); err == nil {
			err = ferr
		}
	}
	c.unlockWrite()
	if err != nil {
		c.fail(fmt.Errorf("%w: write: %w", errConnGone, err), http2.ErrCodeNo, false)
		if cerr := c.closedErr(); cerr != nil {
			return cerr
		}
		return err
	}
	c.flushCtrl()
	return nil
}

// writeHeadersLocked encodes fields and writes them as HEADERS and, past the peer's frame size,
// CONTINUATION frames. Called with wmu held: the hpack encoder's state is the connection's.
func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c.mu.Lock()
	limit, maxFrame := c.peerTableSize, int(c.peerMaxFrame)
	c.mu.Unlock()
	if limit != c.encLimit {
		c.henc.SetMaxDynamicTableSizeLimit(limit)
		c.encLimit = limit
	}
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := min(len(block), maxFrame)
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: block[:first],
		EndStream:     endStream,
		EndHeaders:    first == len(block),
	})
	for block = block[first:]; err == nil && len(block) > 0; {
		n := min(len(block), maxFrame)
		err = c.fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
	return err
}

// writeData writes p as DATA frames of s of at most maxFrame bytes. The caller has taken the
// flow-control window for p. When s can no longer send DATA by the time this holds the write
// lock (closed, reset or ended meanwhile: nothing may follow END_STREAM or RST_STREAM, RFC 9113
// §5.1), or gives up waiting for it (a deadline, Close), nothing is written and the connection
// window goes back.
func (c *h2conn) writeData(s *stream, p []byte, maxFrame int) error {
	err := c.lockStreamWrite(s, len(p) > recordData, false)
	if err == nil {
		c.mu.Lock()
		err = s.sendErrLocked(false)
		c.mu.Unlock()
		if err != nil {
			c.endWrite(nil)
		}
	}
	if err != nil {
		c.mu.Lock()
		c.sendWindow += int64(len(p))
		c.wcond.Broadcast()
		c.mu.Unlock()
		return err
	}
	for {
		n := min(len(p), maxFrame)
		last := n == len(p)
		if n <= recordData {
			err = c.fr.WriteData(s.id, false, p[:n])
		} else {
			// A frame that spans TLS records anyway: its header goes as a record of its own and
			// the payload straight from p, not copied into the Framer's buffer first. Corked,
			// both still leave in one socket write.
			err = c.writeDataHeader(s.id, n, false)
			if err == nil {
				_, err = c.nc.Write(p[:n])
			}
		}
		if err != nil || last {
			break
		}
		p = p[n:]
	}
	return c.endWrite(err)
}

// writeEnd sends s's END_STREAM, an empty DATA frame. With wait unset (Close) it does not wait
// for the write lock: when another writer holds it, perhaps blocked on a peer that does not
// read, the frame is queued for that writer to send after its own frames.
func (c *h2conn) writeEnd(s *stream, wait bool) error {
	if wait {
		if err := c.lockStreamWrite(s, false, true); err != nil {
			return err
		}
	} else if !c.tryLockWrite() {
		c.mu.Lock()
		if s.sendErrLocked(true) == nil {
			s.sendEnded = true
			c.queueLocked(ctrlFrame{kind: ctrlEndStream, id: s.id})
			c.maybeCloseLocked(s)
		}
		c.mu.Unlock()
		c.flushCtrl() // the holder may have let go meanwhile
		return nil
	}
	c.mu.Lock()
	err := s.sendErrLocked(true)
	// Set before the write lock is released, so that no DATA of a Write can follow.
	s.sendEnded = err == nil
	c.mu.Unlock()
	if err != nil {
		c.endWrite(nil)
		return err
	}
	err = c.endWrite(c.fr.WriteData(s.id, true, nil))
	c.mu.Lock()
	c.maybeCloseLocked(s)
	c.mu.Unlock()
	return err
}

// writeDataHeader writes the 9-byte header of a DATA frame of n payload bytes (RFC 9113 §4.1,
// §6.1), for a payload written next. Called with wmu held.
func (c *h2conn) writeDataHeader(id uint32, n int, end bool) error {
	var flags http2.Flags
	if end {
		flags = http2.FlagDataEndStream
	}
	h := &c.dataHeader
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3], h[4] = byte(http2.FrameData), byte(flags)
	h[5], h[6], h[7], h[8] = byte(id>>24&0x7f), byte(id>>16), byte(id>>8), byte(id)
	_, err := c.nc.Write(h[:])
	return err
}

// corkConn sits under the TLS connection. While corked it collects what TLS writes, so that the
// records of one write session (several frames, or a DATA frame bigger than a record) leave in
// one syscall instead of one per record. Uncorked, a write goes straight through without a lock.
// It reads and writes a TCP socket with raw system calls (nbio), so that an idle-then-busy proxy
// does not pay the scheduler's system-call bookkeeping on every packet.
type corkConn struct {
	net.Conn
	nb    *nbio.Socket // nil when Conn is not a poller-owned socket (a pipe in tests)
	state atomic.Int32 // corkOpen, corkCorked, corkFlushing; changed under mu
	mu    sync.Mutex
	buf   []byte
}

func newCorkConn(c net.Conn) *corkConn { return &corkConn{Conn: c, nb: nbio.New(c)} }

// Read is TLS's read of the socket.
func (c *corkConn) Read(p []byte) (int, error) {
	if c.nb != nil {
		return c.nb.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *corkConn) write(p []byte) (int, error) {
	if c.nb != nil {
		return c.nb.Write(p)
	}
	return c.Conn.Write(p)
}

const (
	corkOpen int32 = iota
	corkCorked
	corkFlushing
)

// Write is called by TLS with its output lock held, so records arrive in order. One written
// while a flush is under way (a TLS alert from the reading side) waits for the flush.
func (c *corkConn) Write(p []byte) (int, error) {
	if c.state.Load() == corkOpen {
		return c.write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == corkCorked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.state.Store(corkCorked)
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Store(corkFlushing)
	var err error
	if len(c.buf) > 0 {
		_, err = c.write(c.buf)
	}
	if cap(c.buf) > 256<<10 {
		c.buf = nil // a burst of control frames must not pin a large buffer
	} else {
		c.buf = c.buf[:0]
	}
	c.state.Store(corkOpen)
	return err
}
