package hbone

// Reading frames and acting on them. Everything here runs as the read token holder (h2token.go),
// with mu released while it reads. Rules kept here:
//
//   - Holder-only state (br, the Framer's read side and the frames it reuses, scratch, direct,
//     sawSettings) is used without a lock: only the holder reads (rule 2). A frame from the
//     Framer is valid only until the next read.
//   - Connection and stream state is read and changed under mu, taken per frame and released
//     before the socket is read again: a payload read can block for as long as the peer takes
//     to send it, and nothing may wait with mu held (rule 1).
//   - The reader never waits to write (rule 3): an answer (an acknowledgement, RST_STREAM,
//     WINDOW_UPDATE) is queued with queueLocked and flushed with flushCtrlAsync once mu is
//     released, never flushCtrl.
//   - A waiting Read's buffer is filled outside mu but owned by one goroutine at a time: taken
//     under mu (waitBuf nil, filling set), filled without it, handed over under mu (waitN,
//     filling unset). The Read waits while filling is set, even once its stream has failed: the
//     buffer is the caller's again as soon as Read returns, and must not be written after that.
//   - Every DATA byte, padding included, counts against the connection window when it arrives,
//     delivered or not, and what is dropped goes back at once (consumedLocked): the peer counted
//     it as sent, and a long-lived connection must not lose window to frames on ended streams.
//   - Connection errors are returned, not acted on (see h2token.go). The one close here
//     (handleGoAway on a connection without streams) sends nothing and waits for nothing.

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
)

// readFrame reads and handles one frame.
func (c *h2conn) readFrame() error {
	fh, err := c.fr.ReadFrameHeader()
	if err != nil {
		return err
	}
	c.framesRead.Add(1)
	if !c.sawSettings && (fh.Type != http2.FrameSettings || fh.Flags.Has(http2.FlagSettingsAck)) {
		// The peer's preface is a SETTINGS frame (RFC 9113 §3.4).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if fh.Type == http2.FrameData {
		return c.readData(fh)
	}
	f, err := c.fr.ReadFrameForHeader(fh)
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			c.streamError(se.StreamID, se.Code)
			return nil
		}
		return err
	}
	return c.handleFrame(f)
}

func (c *h2conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.MetaHeadersFrame:
		if c.server {
			return c.serverHeaders(f)
		}
		return c.clientHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			c.queueLocked(ctrlFrame{kind: ctrlPingAck, data: f.Data})
			c.mu.Unlock()
			c.flushCtrlAsync()
		}
		// An answer needs no bookkeeping: any frame read proves the peer alive (keepalive).
		return nil
	case *http2.RSTStreamFrame:
		return c.handleRST(f)
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		// We never enable push, and a client must not send it (RFC 9113 §8.4).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY, PRIORITY_UPDATE and unknown extension frames carry nothing for a tunnel.
		return nil
	}
}

func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = st.Val
		case http2.SettingEnablePush:
			if !c.server && st.Val != 0 {
				return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 §6.5.2
			}
		case http2.SettingInitialWindowSize:
			// Applies to every open stream's send window, which may go negative (§6.9.2).
			delta := int64(st.Val) - int64(c.peerInitWindow)
			c.peerInitWindow = st.Val
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		}
		return nil
	})
	if err == nil {
		c.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
		c.wakeWritersLocked()
		if !c.sawSettings {
			c.sawSettings = true
			close(c.settingsc)
		}
	}
	c.mu.Unlock()
	c.flushCtrlAsync()
	return err
}

func (c *h2conn) handleRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.flushCtrlAsync() // the window of dropped unread bytes
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if c.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	switch {
	case f.ErrCode == http2.ErrCodeNo && s.recvDone:
		// "Stop sending": the peer has said all it will say (RFC 9113 §8.1). What it said stays
		// readable; writes end.
		if s.werr == nil {
			s.werr = resetError{http2.ErrCodeNo}
		}
		s.reset = true
		c.abortWritersLocked()
		c.maybeCloseLocked(s)
	case f.ErrCode == http2.ErrCodeRefusedStream:
		c.resetLocked(s, f.ErrCode, fmt.Errorf("%w: %w", errConnUnusable, errRefused), false)
	default:
		c.resetLocked(s, f.ErrCode, resetError{f.ErrCode}, false)
	}
	return nil
}

func (c *h2conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	for id, s := range c.streams {
		// Streams we opened past the peer's last processed one never reached it: safe to retry.
		if id > f.LastStreamID && c.ownLocked(id) {
			c.resetLocked(s, http2.ErrCodeRefusedStream, fmt.Errorf("%w: %w", errConnUnusable, errGoAway), false)
		}
	}
	idle := len(c.streams) == 0
	c.mu.Unlock()
	c.flushCtrlAsync()
	c.notifyGone()
	if idle {
		c.close()
	}
}

// streamError answers a stream-level protocol error with RST_STREAM and ends the stream here.
func (c *h2conn) streamError(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if c.server && id%2 == 1 && id > c.lastPeerID {
		c.lastPeerID = id // a malformed HEADERS still uses up its stream ID
	}
	if s := c.streams[id]; s != nil {
		c.resetLocked(s, code, fmt.Errorf("hbone: stream protocol error: %v", code), true)
	} else {
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: id, val: uint32(code)})
	}
	c.mu.Unlock()
	c.flushCtrlAsync()
}

// readData reads one DATA frame's payload: straight into the buffer of a Read waiting on the
// stream when there is one, into the stream's chunks otherwise.
func (c *h2conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	size := int(fh.Length)
	body, pad := size, 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if size < 1 {
			return http2.ConnectionError(http2.ErrCodeFrameSize)
		}
		if _, err := io.ReadFull(c.br, c.scratch[:1]); err != nil {
			return err
		}
		pad = int(c.scratch[0])
		if 1+pad > size {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		body = size - 1 - pad
	}
	unread := body + pad // payload bytes still in the connection
	// The holder's own Read gets the payload before the checks, without taking the lock twice:
	// a Read may use all of its buffer as scratch space, so bytes that turn out not to be
	// deliverable are simply not reported.
	var pre []byte
	if c.direct != nil && c.direct.id == fh.StreamID && body > 0 {
		pre = c.directBuf[:min(body, len(c.directBuf))]
		if _, err := io.ReadFull(c.br, pre); err != nil {
			return err
		}
		unread -= len(pre)
	}
	c.mu.Lock()
	if int64(size) > c.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= int64(size)
	s := c.direct
	if s == nil || s.id != fh.StreamID || s.wireClosed {
		s = c.streams[fh.StreamID]
	}
	var rstCode http2.ErrCode
	deliver := false
	switch {
	case s == nil:
		if c.idleLocked(fh.StreamID) {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		// A stream that ended (we may have reset it while this was in flight): drop the data.
	case s.rerr != nil:
		// Ended here, not yet on the wire: drop.
	case s.recvDone:
		rstCode = http2.ErrCodeStreamClosed // DATA after END_STREAM
	case int64(size) > int64(s.recvWindow):
		rstCode = http2.ErrCodeFlowControl
	default:
		deliver = true
	}
	if !deliver {
		// The connection window still counts what is dropped; give it back at once.
		c.consumedLocked(nil, size)
		if rstCode != 0 {
			c.resetLocked(s, rstCode, fmt.Errorf("hbone: stream protocol error: %v", rstCode), true)
		}
		c.mu.Unlock()
		c.flushCtrlAsync()
		return c.discard(unread)
	}
	s.recvWindow -= int32(size)
	if size > body {
		c.consumedLocked(s, size-body) // padding counts against the window but reaches no one
	}
	var direct []byte
	switch {
	case pre != nil && s.waitBuf != nil && s.recvLen == 0:
		s.waitN = len(pre)
		s.waitBuf = nil
		c.deliveredData = true
		c.wakeLocked(s)
	case pre != nil:
		s.appendLocked(pre) // not reachable while the holder waits in Read; kept for safety
		if s.waitReady {
			c.deliveredData = true
			c.wakeLocked(s)
		}
	case body > 0 && s.waitBuf != nil && s.recvLen == 0:
		// Another goroutine's Read waits: fill its buffer outside the lock.
		direct = s.waitBuf[:min(body, len(s.waitBuf))]
		s.waitBuf = nil
		s.filling = true
	}
	if unread == 0 && fh.Flags.Has(http2.FlagDataEndStream) && direct == nil {
		c.endRecvLocked(s)
		c.mu.Unlock()
		c.flushCtrlAsync()
		return nil
	}
	c.mu.Unlock()

	if len(direct) > 0 {
		_, err := io.ReadFull(c.br, direct)
		unread -= len(direct)
		c.mu.Lock()
		s.filling = false
		if err == nil {
			s.waitN = len(direct)
			c.deliveredData = true
		}
		c.wakeLocked(s)
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	for rest := unread - pad; rest > 0; {
		m := min(rest, len(c.scratch))
		if _, err := io.ReadFull(c.br, c.scratch[:m]); err != nil {
			return err
		}
		rest -= m
		c.mu.Lock()
		if s.rerr != nil {
			c.consumedLocked(nil, m)
		} else {
			s.appendLocked(c.scratch[:m])
			if s.waitBuf != nil || s.waitReady {
				c.deliveredData = true
				c.wakeLocked(s)
			}
		}
		c.mu.Unlock()
	}
	if pad > 0 {
		if err := c.discard(pad); err != nil {
			return err
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.mu.Lock()
		c.endRecvLocked(s)
		c.mu.Unlock()
	}
	c.flushCtrlAsync()
	return nil
}

// discard reads and drops n payload bytes.
func (c *h2conn) discard(n int) error {
	for n > 0 {
		m := min(n, len(c.scratch))
		if _, err := io.ReadFull(c.br, c.scratch[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}
