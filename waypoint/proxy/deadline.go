package proxy

// softDeadlines lets net/http's servers use their read deadlines on an HBONE tunnel.
//
// A tunnel cannot abandon a blocked Read and stay in a known state with its peer, so a read
// deadline that passes resets it (ztunnel/hbone). net/http's server, though, aborts its
// background read after each request by setting a read deadline in the past, and expects the
// connection to go on; on a tunnel that reset the client's next request or the end of a
// response. Here the tunnel is read by one goroutine of its own, and Read waits for that
// goroutine's data or for the deadline, whichever comes first: a deadline only ever ends a Read,
// never the tunnel. Write deadlines are not used by the servers here and are ignored. Close ends
// the pump too, even when it holds a chunk nobody will read.

import (
	"net"
	"os"
	"sync"
	"time"
)

type softDeadlines struct {
	net.Conn
	start    sync.Once
	data     chan []byte   // chunks read by the pump; closed at the first error
	consumed chan struct{} // the pump may reuse its buffer
	readErr  error         // set before data is closed
	pending  []byte        // the unread rest of the last chunk (Read's goroutine only)
	timer    *time.Timer   // Read's deadline, one timer reset per wait (Read's goroutine only)

	mu       sync.Mutex
	deadline time.Time
	changed  chan struct{} // Read's, made when it waits; closed and dropped when the deadline changes

	closing chan struct{} // closed by Close
	once    sync.Once
	pumped  chan struct{} // closed when the pump has returned (tests)
}

func newSoftDeadlines(c net.Conn) *softDeadlines {
	return &softDeadlines{Conn: c, data: make(chan []byte), consumed: make(chan struct{}, 1),
		closing: make(chan struct{}), pumped: make(chan struct{})}
}

// Close closes the tunnel and ends the pump.
func (c *softDeadlines) Close() error {
	c.once.Do(func() { close(c.closing) })
	return c.Conn.Close()
}

func (c *softDeadlines) pump() {
	defer close(c.pumped)
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Conn.Read(buf)
		if n > 0 {
			select {
			case c.data <- buf[:n]:
			case <-c.closing:
				return
			}
			select {
			case <-c.consumed:
			case <-c.closing:
				return
			}
		}
		if err != nil {
			c.readErr = err
			close(c.data)
			return
		}
	}
}

func (c *softDeadlines) Read(b []byte) (int, error) {
	select {
	case <-c.closing:
		return 0, net.ErrClosed
	default:
	}
	if len(c.pending) > 0 {
		return c.take(b), nil
	}
	c.start.Do(func() { go c.pump() })
	for {
		c.mu.Lock()
		dl := c.deadline
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		changed := c.changed
		c.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			if c.timer == nil {
				c.timer = time.NewTimer(d)
			} else {
				c.timer.Reset(d)
			}
			expired = c.timer.C
		}
		select {
		case p, ok := <-c.data:
			c.stopTimer(expired)
			if !ok {
				return 0, c.readErr
			}
			c.pending = p
			return c.take(b), nil
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
			c.stopTimer(expired)
		case <-c.closing:
			c.stopTimer(expired)
			return 0, net.ErrClosed
		}
	}
}

// stopTimer stops Read's timer if this wait armed it (a stopped timer delivers nothing after).
func (c *softDeadlines) stopTimer(armed <-chan time.Time) {
	if armed != nil {
		c.timer.Stop()
	}
}

// take copies from the pending chunk and lets the pump go on once it is used up.
func (c *softDeadlines) take(b []byte) int {
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.consumed <- struct{}{}
	}
	return n
}

func (c *softDeadlines) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	if c.changed != nil { // wake a waiting Read to look again
		close(c.changed)
		c.changed = nil
	}
	c.mu.Unlock()
	return nil
}

func (c *softDeadlines) SetWriteDeadline(time.Time) error { return nil }

func (c *softDeadlines) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }
