package hbone

// A stream's state on the wire as the connection sees it: idle, open, closed (RFC 9113 §5.1).
// All of it under mu. Rules kept here:
//
//   - A stream retires once (maybeCloseLocked, guarded by wireClosed), when it is closed on the
//     wire: both END_STREAMs, or a reset either way. A half-closed stream stays in c.streams, for
//     the peer may still send on it; frames that arrive for a retired one (they may have crossed
//     our RST_STREAM) are dropped, and their bytes go back to the connection window.
//   - recentClosed tells a HEADERS that crossed a stream's end (a stream error: STREAM_CLOSED)
//     from a stream ID out of order (a connection error).
//   - A reset queues its RST_STREAM (the caller may be the read token holder: rule 3), and wakes
//     the stream's writers (abortWritersLocked): a Write waiting for window or for the write lock
//     must give up now. The queued RST_STREAM goes after any DATA of the stream already being
//     written, and none after it (rule 4).
//   - The last stream of a connection that sent or received GOAWAY closes the connection from a
//     new goroutine: maybeCloseLocked runs under mu, perhaps on the token holder, and closing
//     takes mu and waits for the write lock (rules 1 and 3).

import (
	"slices"

	"golang.org/x/net/http2"
)

// idleLocked reports whether id names a stream that was never opened (RFC 9113 §5.1).
func (c *h2conn) idleLocked(id uint32) bool {
	if c.server {
		return id%2 == 0 || id > c.lastPeerID
	}
	return id%2 == 0 || id >= c.nextID
}

// recentlyClosedLocked reports whether stream id was open and closed lately.
func (c *h2conn) recentlyClosedLocked(id uint32) bool {
	return id != 0 && slices.Contains(c.recentClosed[:], id)
}

// ownLocked reports whether this end opened stream id.
func (c *h2conn) ownLocked(id uint32) bool { return !c.server && id%2 == 1 }

// endRecvLocked records the peer's END_STREAM.
func (c *h2conn) endRecvLocked(s *stream) {
	if s.recvDone {
		return
	}
	s.recvDone = true
	c.wakeLocked(s)
	c.maybeCloseLocked(s)
}

// resetLocked ends s both ways now, with err for its local reads and writes, and sends
// RST_STREAM code when send is set.
func (c *h2conn) resetLocked(s *stream, code http2.ErrCode, err error, send bool) {
	if send && !s.wireClosed {
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: s.id, val: uint32(code)})
	}
	s.failLocked(err)
	s.reset = true
	c.abortWritersLocked()
	c.maybeCloseLocked(s)
}

// maybeCloseLocked retires s once it is closed on the wire: both ends sent END_STREAM, or it was
// reset.
func (c *h2conn) maybeCloseLocked(s *stream) {
	if s.wireClosed || !(s.reset || (s.sendEnded && s.recvDone)) {
		return
	}
	s.wireClosed = true
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	c.recentClosed[c.recentNext%uint32(len(c.recentClosed))] = s.id
	c.recentNext++
	if c.server && !s.handlerRunning {
		c.handlers--
	}
	if s.cancel != nil {
		s.cancel()
	}
	if (c.goAwaySent || c.goAwayRecv) && len(c.streams) == 0 && c.err == nil {
		go c.closeGracefully()
	}
}
