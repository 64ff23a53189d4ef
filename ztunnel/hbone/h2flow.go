package hbone

// Flow control (RFC 9113 §5.2, §6.9), the tunnel's backpressure. Every window field is under mu.
// Rules kept here:
//
//   - A receive window is credited back only as the application reads (Read's consumed), or as
//     bytes are dropped (padding, DATA that cannot be delivered, a reset stream's unread chunks):
//     crediting sooner would let a fast peer outrun a slow reader, never crediting dropped bytes
//     would shrink a long-lived connection's window with every reset.
//   - WINDOW_UPDATEs are batched (refreshWindow) and queued, never written here: consumedLocked
//     runs under mu, often on the read token holder (rules 1 and 3); its callers flush once mu
//     is released. Increments to one stream coalesce in the queue within one window.
//   - Send windows are taken under mu before the write lock is asked for (stream.Write), and
//     writeData gives the connection's back when the DATA is not written; a stream's window may
//     go negative after SETTINGS lowers INITIAL_WINDOW_SIZE (§6.9.2).
//   - Every increase of a send window wakes the writers waiting for window (wcond): a writer
//     sleeps on it with mu released and nothing else tells it. One the reader sees (WINDOW_UPDATE,
//     SETTINGS) also marks a delivery when writers wait (wakeWritersLocked), which ends
//     readLoop's turn with the token and passes the token on, as waking a Read does (h2token.go).

import (
	"golang.org/x/net/http2"
)

func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		c.wakeWritersLocked()
		over := c.sendWindow > maxWindow
		c.mu.Unlock()
		if over {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream that ended; the update may have crossed its end
	}
	s.sendWindow += int64(f.Increment)
	if s.sendWindow > maxWindow {
		c.resetLocked(s, http2.ErrCodeFlowControl, resetError{http2.ErrCodeFlowControl}, true)
	}
	c.wakeWritersLocked()
	c.mu.Unlock()
	c.flushCtrlAsync()
	return nil
}

// wakeWritersLocked wakes writers waiting for window.
func (c *h2conn) wakeWritersLocked() {
	if c.winWaiters > 0 {
		c.delivered = true
	}
	c.wcond.Broadcast()
}

// consumedLocked returns n received bytes to the peer's send windows: the connection's, and the
// stream's when s is not nil. A WINDOW_UPDATE goes out once half the window has been consumed,
// so a steady stream costs one every few MiB, or sooner once what was consumed reaches what the
// peer may still send (x/net's rule): when slow readers hold most of the connection window
// unread, the streams that do read must not wait for half of it.
func (c *h2conn) consumedLocked(s *stream, n int) {
	c.recvUnacked += int64(n)
	if refreshWindow(c.recvUnacked, c.recvWindow, int64(c.flow.connWindow())) {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, val: uint32(c.recvUnacked)})
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
	if s == nil || s.recvDone || s.rerr != nil {
		return
	}
	s.recvUnacked += int32(n)
	if refreshWindow(int64(s.recvUnacked), int64(s.recvWindow), int64(c.flow.streamWindow())) {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, id: s.id, val: uint32(s.recvUnacked)})
		s.recvWindow += s.recvUnacked
		s.recvUnacked = 0
	}
}

// minRefresh is the least WINDOW_UPDATE increment sent while the peer still has that much window.
const minRefresh = 16 << 10

// refreshWindow reports whether to return unacked consumed bytes of a window of size window, of
// which the peer may still send remaining.
func refreshWindow(unacked, remaining, window int64) bool {
	switch {
	case unacked <= 0:
		return false
	case unacked >= window/2:
		return true
	default:
		return unacked >= remaining && (unacked >= minRefresh || remaining < minRefresh)
	}
}
