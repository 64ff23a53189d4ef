package hbone

// The read token: which goroutine reads the socket (rule 2 in h2conn.go). Rules kept here:
//
//   - One reader: tHeld, tHolder and tReader change only under mu, and only the holder reads the
//     socket. The holder releases mu only around the socket read (readFramesLocked) and acts on
//     what it read with mu held again: what a frame changes is shared with every stream's Read
//     and Write, and with whoever looks at the token to decide whether to wait or read.
//   - Always one: every path that gives the token up, or was woken to take it and finds it no
//     longer needs it (waitTurnLocked, a Write woken for window), calls passTokenLocked, which
//     wakes the next Read, else the writers waiting for window, else readLoop, now or after
//     bgDelay. A wake-up can be wasted (the waiter found its data meanwhile), so the armed bgTimer
//     is the backstop that lets readLoop take a token left free. tokenLostLocked checks this in
//     tests.
//   - bgTimer is armed at most once per bgDelay, not at every release: a busy tunnel releases
//     the token at every message, and a timer update per message would cost each round trip.
//     A release after the timer was armed gets its own bgDelay when it fires (bgReleases).
//   - Interrupt only between frames: a holder blocked on the socket is cut short (a past read
//     deadline) only from readWaitHeader, by a compare-and-swap under mu; the holder clears the
//     deadline under mu too, so the two cannot cross and no deadline is left behind. A read cut
//     mid-frame would lose the framing; the bufio.Reader keeps a partial header across the cut.
//   - Read and protocol errors are returned, not acted on: the caller releases the token and
//     mu, then readFailed ends the connection, which takes mu and may wait for the write lock
//     to send GOAWAY (rules 1 and 3).

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/net/http2"
)

const (
	readBusy int32 = iota
	readWaitHeader
	readInterrupted
)

// readLoop is the connection's own reader: it holds the read token whenever nobody else needs
// it (see the top of this file) and returns when the connection ends.
func (c *h2conn) readLoop() {
	c.mu.Lock()
	for {
		for c.err == nil && (c.tHeld || c.bgIdle) {
			c.bgcond.Wait()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		c.takeTokenLocked(nil, false)
		c.delivered, c.deliveredData = false, false
		err := c.readFramesLocked(func() bool { return c.delivered })
		// After handing data to a Read, let that Read read the socket next; after an end or
		// an error, read on at once: nobody else may come.
		c.releaseTokenLocked(c.deliveredData)
		if err != nil {
			c.mu.Unlock()
			c.readFailed(err)
			c.mu.Lock()
		}
	}
}

// bgWake lets readLoop take the token once it has stayed free for bgDelay. The timer is armed
// at most once per bgDelay, not at every release: a busy tunnel releases the token at every
// message.
func (c *h2conn) bgWake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bgArmed = false
	switch {
	case !c.bgIdle || c.tHeld || c.err != nil:
		// Someone reads; the next release that leaves the token free arms the timer again.
	case c.bgReleases != c.bgArmedAt:
		// Taken and released again meanwhile: give that release its own bgDelay.
		c.armBgLocked()
	default:
		c.bgIdle = false
		c.bgcond.Signal()
	}
}

func (c *h2conn) armBgLocked() {
	c.bgArmed = true
	c.bgArmedAt = c.bgReleases
	c.bgTimer.Reset(bgDelay)
}

// takeTokenLocked makes holder (nil for readLoop) the one goroutine that reads frames; reader is
// set when it is holder's Read, whose buffer it then fills directly.
func (c *h2conn) takeTokenLocked(holder *stream, reader bool) {
	c.tHeld, c.tHolder, c.tReader = true, holder, reader
}

// releaseTokenLocked gives the read token up and passes it on: to a waiting Read, else to waiting
// writers, else to readLoop, at once or, when soon is set (the holder got what it waited for
// and will likely be back), after bgDelay.
func (c *h2conn) releaseTokenLocked(soon bool) {
	c.tHeld, c.tHolder, c.tReader = false, nil, false
	c.passTokenLocked(soon)
}

// Invariant (tokenLostLocked): while the connection runs, the token is held, or readLoop may
// take it (bgIdle unset: it was signalled), or bgTimer is armed to let it. A waiter woken to take
// the token may find it no longer needs it; the armed timer is the backstop for that case, so
// the socket is never left unread.
func (c *h2conn) passTokenLocked(soon bool) {
	if c.tHeld || c.err != nil {
		return
	}
	switch {
	case len(c.tQueue) > 0:
		c.tQueue[0].rcond.Broadcast()
	case c.winWaiters > 0:
		c.wcond.Broadcast()
	case !soon:
		c.bgIdle = false
		c.bgcond.Signal()
		return
	default:
		c.bgIdle = true
	}
	if c.bgIdle {
		c.bgReleases++
		if !c.bgArmed {
			c.armBgLocked()
		}
	}
}

// tokenLostLocked reports a broken token invariant (see passTokenLocked): nobody holds the read
// token and nobody will take it.
func (c *h2conn) tokenLostLocked() bool {
	return c.err == nil && !c.tHeld && c.bgIdle && !c.bgArmed
}

// waitTurnLocked waits on s.rcond for the token holder to deliver to s, or for the token.
func (c *h2conn) waitTurnLocked(s *stream) {
	c.tQueue = append(c.tQueue, s)
	s.rcond.Wait()
	c.dequeueLocked(s)
	if !c.tHeld {
		// Woken to take the free token. If s does not need it after all, the next one must.
		c.passTokenLocked(true)
	}
}

func (c *h2conn) dequeueLocked(s *stream) bool {
	for i, x := range c.tQueue {
		if x == s {
			c.tQueue = append(c.tQueue[:i], c.tQueue[i+1:]...)
			return true
		}
	}
	return false
}

// wakeLocked hands what arrived for s (data, end of stream, an error, a response) to the Read or
// CONNECT waiting on it. It takes s out of the token queue at once, so that a holder releasing
// the token next does not pass it to a waiter that no longer needs it.
func (c *h2conn) wakeLocked(s *stream) {
	if c.dequeueLocked(s) || s.waitBuf != nil {
		c.delivered = true
	}
	s.rcond.Broadcast()
}

// interruptLocked wakes the token holder s from a socket read so that it sees its stream ended.
func (c *h2conn) interruptLocked(s *stream) {
	if c.tHeld && c.tHolder == s && c.tState.CompareAndSwap(readWaitHeader, readInterrupted) {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// readFramesLocked reads and handles frames as the token holder until done reports true. It is
// called, and returns, with c.mu held; done is checked with it held before each frame. It
// returns read and protocol errors; the caller, once it has released the token, passes them to
// readFailed.
func (c *h2conn) readFramesLocked(done func() bool) error {
	for c.err == nil && !done() {
		// A Read holding the token takes its own stream's next DATA straight into its buffer.
		c.direct, c.directBuf = nil, nil
		if h := c.tHolder; c.tReader && h.waitBuf != nil && h.recvLen == 0 && !h.filling {
			c.direct, c.directBuf = h, h.waitBuf
		}
		c.tState.Store(readWaitHeader)
		c.mu.Unlock()
		_, err := c.br.Peek(frameHeaderLen)
		if c.tState.Swap(readBusy) == readInterrupted {
			// The interrupter sets the deadline under mu: clearing it under mu too orders the
			// two, and no frame may be cut short.
			c.mu.Lock()
			c.nc.SetReadDeadline(time.Time{})
			c.mu.Unlock()
			if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
		} else if err == nil {
			err = c.readFrame()
		}
		c.mu.Lock()
		c.direct, c.directBuf = nil, nil
		if err != nil {
			return err
		}
		if c.ctrlOverflow {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	}
	return nil
}

// readFailed ends the connection after a read or protocol error.
func (c *h2conn) readFailed(err error) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.fail(fmt.Errorf("hbone: protocol error: %w", err), http2.ErrCode(ce), true)
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.fail(fmt.Errorf("hbone: protocol error: %w", err), http2.ErrCodeFrameSize, true)
	default:
		c.fail(fmt.Errorf("%w: %w", errConnGone, err), http2.ErrCodeNo, false)
	}
}
