package hbone

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// stallConn is a connection whose writes block, once stalled, until released: a socket whose
// send buffer is full because the peer does not read.
type stallConn struct {
	net.Conn
	stalled atomic.Bool
	blocked chan struct{} // a write is blocked
	release chan struct{}
}

func (c *stallConn) Write(p []byte) (int, error) {
	if c.stalled.Load() {
		select {
		case c.blocked <- struct{}{}:
		default:
		}
		<-c.release
	}
	return c.Conn.Write(p)
}

// TestReaderDoesNotBlockOnControlWrites: the read token holder never blocks on writing a control
// frame (here a PING acknowledgement into a full socket): it reads on, so that a peer that is
// itself blocked writing to us is read, and new streams are still served.
func TestReaderDoesNotBlockOnControlWrites(t *testing.T) {
	sc := &stallConn{blocked: make(chan struct{}, 1), release: make(chan struct{})}
	served := make(chan struct{}, 1)
	hc, p, _ := tcpServerWrap(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		served <- struct{}{}
		return nil
	}), func(c net.Conn) net.Conn { sc.Conn = c; return sc })
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	p.must(p.fr.WritePing(false, [8]byte{'a'}))
	p.next(ofType(http2.FramePing, 0))

	sc.stalled.Store(true)
	defer close(sc.release)
	p.must(p.fr.WritePing(false, [8]byte{'b'}))
	<-sc.blocked // the acknowledgement's write is stuck
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	select {
	case <-served:
	case <-hc.done:
		t.Fatal("connection ended")
	case <-timeoutC():
		t.Fatal("a new stream is not served while a control frame's write is blocked: nobody reads")
	}
}

func timeoutC() <-chan time.Time { return time.After(testTimeout()) }
