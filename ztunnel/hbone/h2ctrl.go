package hbone

// The control queue: frames queued by whoever cannot or need not wait for the write lock (the
// read token holder, a Close, keepalive), written by whoever holds the lock next. Rules kept here:
//
//   - The reader never waits to write (rule 3 in h2conn.go): queueLocked only appends, under mu;
//     flushCtrlAsync only tries the write lock and, when it gets it, hands it to a new goroutine
//     that writes. flushCtrl writes on its caller's goroutine, so the token holder never calls it.
//   - Nothing queued is stranded: a queuer tries the write lock after setting ctrlPending, and a
//     lock holder looks at ctrlPending again after releasing the lock (endWrite's flushCtrl), so
//     one of the two writes what was queued.
//   - The queue is written in order, under the write lock, after the frames of the session in
//     progress: a queued RST_STREAM or END_STREAM goes after the DATA it must follow (rule 4).
//   - The batch being written belongs to the write lock (ctrlSpare), and queuers append to
//     another slice meanwhile, so that writing needs no mu.
//   - Bounded: past maxCtrlQueue frames the connection ends with ENHANCE_YOUR_CALM. A peer can
//     make us queue answers for as long as a write is stuck on it not reading.
//   - Once the connection has ended (c.err) nothing more is queued; fail takes what a graceful
//     close still sends.

import (
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ctrlFrame is a frame queued for whoever next holds the write lock.
type ctrlFrame struct {
	kind ctrlKind
	id   uint32
	val  uint32 // WINDOW_UPDATE increment, RST_STREAM and GOAWAY code, HEADERS status
	data [8]byte
}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPing
	ctrlPingAck
	ctrlWindowUpdate
	ctrlRST
	ctrlGoAway
	ctrlStatus    // a response HEADERS with END_STREAM, for requests refused on the reader goroutine
	ctrlEndStream // an empty DATA with END_STREAM, from a Close that found the write lock taken
)

// queueLocked queues a frame for the next holder of the write lock; callers call flushCtrl after
// unlocking c.mu.
//
// The queue is bounded: a peer that floods frames needing an answer (PING, SETTINGS, frames
// answered with RST_STREAM) while the write lock is held, e.g. by a write blocked on a peer that
// does not read, would otherwise grow it without bound. Past maxCtrlQueue the connection fails
// with ENHANCE_YOUR_CALM (as x/net's server does); the token holder sees ctrlOverflow after the
// frame that caused it.
func (c *h2conn) queueLocked(f ctrlFrame) {
	if c.err != nil {
		return
	}
	if n := len(c.ctrl); f.kind == ctrlWindowUpdate && n > 0 {
		if last := &c.ctrl[n-1]; last.kind == ctrlWindowUpdate && last.id == f.id {
			last.val += f.val // both within one window: no overflow
			return
		}
	}
	if len(c.ctrl) >= maxCtrlQueue {
		c.ctrlOverflow = true
		return
	}
	c.ctrl = append(c.ctrl, f)
	c.ctrlPending.Store(true)
}

// flushCtrl writes queued frames unless another goroutine holds the write lock, in which case
// that one writes them before letting go (see endWrite).
func (c *h2conn) flushCtrl() {
	for c.ctrlPending.Load() {
		if !c.tryLockWrite() {
			return
		}
		if err := c.endWrite(nil); err != nil {
			return
		}
	}
}

// flushCtrlAsync is flushCtrl for the read token holder, which must never block on a socket
// write: under bulk traffic both ways, the peer's reader may itself be blocked writing to us,
// waiting for us to read, and two readers stuck writing control frames would stall the
// connection until the write timeout. When the write lock is free, a goroutine takes it over
// and writes the queued frames, and the holder reads on. (Other writers write the queue at
// their endWrite.) Control frames that need an answer are rare, so is the goroutine.
func (c *h2conn) flushCtrlAsync() {
	if c.ctrlPending.Load() && c.tryLockWrite() {
		go c.endWrite(nil)
	}
}

// writeCtrlLocked writes the queued control frames. Called with wmu held.
func (c *h2conn) writeCtrlLocked() error {
	if !c.ctrlPending.Load() {
		return nil
	}
	c.mu.Lock()
	c.ctrlPending.Store(false)
	frames := c.ctrl
	c.ctrl = c.ctrlSpare[:0]
	c.mu.Unlock()
	err := c.writeFramesLocked(frames)
	c.ctrlSpare = frames[:0]
	return err
}

// writeFramesLocked writes control frames. Called with wmu held.
func (c *h2conn) writeFramesLocked(frames []ctrlFrame) error {
	var err error
	for _, f := range frames {
		switch f.kind {
		case ctrlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctrlPing:
			err = c.fr.WritePing(false, f.data)
		case ctrlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctrlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.id, f.val)
		case ctrlRST:
			err = c.fr.WriteRSTStream(f.id, http2.ErrCode(f.val))
		case ctrlGoAway:
			err = c.fr.WriteGoAway(f.id, http2.ErrCode(f.val), nil)
		case ctrlStatus:
			err = c.writeHeadersLocked(f.id, []hpack.HeaderField{statusField(int(f.val))}, true)
		case ctrlEndStream:
			err = c.fr.WriteData(f.id, true, nil)
		}
		if err != nil {
			break
		}
	}
	return err
}
