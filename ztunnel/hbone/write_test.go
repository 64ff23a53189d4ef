package hbone

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// holdingServer starts a server over TCP whose Handler accepts each tunnel, hands it over on the
// returned channel and holds it until the test ends, with no write timeout (see
// TestWriteTimeoutEndsConn), and opens stream 1 from the raw peer.
func holdingServer(t *testing.T) (*h2conn, *rawPeer, <-chan Conn) {
	t.Helper()
	cfg := DefaultServerConfig()
	cfg.PingTimeout = time.Hour
	conns := make(chan Conn, 2)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	hc, p, _ := tcpServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		conns <- c
		<-hold
		return nil
	}))
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	p.next(ofType(http2.FrameHeaders, 1))
	return hc, p, conns
}

// TestWriteBehindStuckWriter: while another writer holds the connection's write lock (blocked on
// a peer that does not read, simulated here by holding the lock), a Write waiting for it returns
// at its deadline, and a server Close returns at once: its END_STREAM and RST_STREAM leave, in
// that order, when the lock is free again.
func TestWriteBehindStuckWriter(t *testing.T) {
	hc, p, conns := holdingServer(t)
	w := <-conns
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:3")
	p.next(ofType(http2.FrameHeaders, 3))
	cl := <-conns

	hc.wmu.Lock() // the stuck writer
	wrote := make(chan error, 1)
	w.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	go func() { _, err := w.Write([]byte("late")); wrote <- err }()
	closed := make(chan struct{})
	go func() { cl.Close(); close(closed) }()
	for range 2 {
		select {
		case err := <-wrote:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Write behind a stuck writer: %v, want os.ErrDeadlineExceeded", err)
			}
			wrote = nil
		case <-closed:
			closed = nil
		case <-time.After(testTimeout()):
			t.Fatalf("blocked behind the write lock: Write returned %v, Close returned %v", wrote == nil, closed == nil)
		}
	}
	hc.mu.Lock()
	window := hc.sendWindow
	hc.mu.Unlock()
	if window != initialWindow {
		t.Errorf("connection send window %d after the aborted Write, want %d back", window, initialWindow)
	}
	hc.unlockWrite()
	hc.flushCtrl()
	// The frames of the two streams, in their order per stream (the streams' frames may
	// interleave either way).
	var s1, s3 []rawFrame
	for len(s1)+len(s3) < 3 {
		f := p.next(func(f rawFrame) bool { return f.id == 1 || f.id == 3 })
		if f.id == 1 {
			s1 = append(s1, f)
		} else {
			s3 = append(s3, f)
		}
	}
	if len(s3) != 2 || s3[0].typ != http2.FrameData || !s3[0].flags.Has(http2.FlagDataEndStream) || len(s3[0].data) != 0 ||
		s3[1].typ != http2.FrameRSTStream || s3[1].code != http2.ErrCodeNo {
		t.Errorf("frames on stream 3 after Close: %+v, want END_STREAM, then RST_STREAM NO_ERROR", s3)
	}
	if len(s1) != 1 || s1[0].typ != http2.FrameRSTStream || s1[0].code != http2.ErrCodeCancel {
		t.Errorf("frames on stream 1 after its deadline: %+v, want RST_STREAM CANCEL, no DATA", s1)
	}
}

// TestWriteTimeoutEndsConn: a socket write that a peer which stopped reading keeps blocked ends
// the connection after PingTimeout, so that the writer, and every stream behind it, is freed.
func TestWriteTimeoutEndsConn(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.PingTimeout = 200 * time.Millisecond
	wrote := make(chan error, 1)
	hc, p, _ := tcpServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				wrote <- err
				return nil
			}
		}
	}), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	// The peer grants every window and never reads.
	p.must(p.fr.WriteWindowUpdate(0, 1<<31-1-initialWindow))
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	select {
	case err := <-wrote:
		if err == nil {
			t.Error("Write returned no error")
		}
	case <-time.After(testTimeout()):
		t.Fatal("Write still blocked on a peer that does not read")
	}
	<-hc.done
	if err := hc.closedErr(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection ended with %v, want a write timeout", err)
	}
}

// TestNoDataAfterEndStream: a Write that took its window and waits for the write lock while
// Close ends the stream sends nothing: no DATA may follow END_STREAM or RST_STREAM on the wire.
func TestNoDataAfterEndStream(t *testing.T) {
	hc, p, conns := holdingServer(t)
	c := <-conns

	hc.wmu.Lock()
	wrote := make(chan error, 1)
	go func() { _, err := c.Write([]byte("after")); wrote <- err }()
	testutil.Eventually(t, testTimeout(), "the Write to wait for the write lock", func() bool { return hc.wmuWaiting.Load() == 1 })
	c.Close()
	if err := <-wrote; err == nil {
		t.Error("Write raced by Close returned no error")
	}
	hc.unlockWrite()
	hc.flushCtrl()
	if f := p.next(ofType(http2.FrameData, 1)); !f.flags.Has(http2.FlagDataEndStream) || len(f.data) != 0 {
		t.Errorf("DATA %q (flags %v) on stream 1, want only END_STREAM", f.data, f.flags)
	}
	p.must(p.fr.WritePing(false, [8]byte{'x'}))
	for f := p.next(func(f rawFrame) bool { return f.id == 1 || f.typ == http2.FramePing }); f.typ != http2.FramePing; f = p.next(func(f rawFrame) bool { return f.id == 1 || f.typ == http2.FramePing }) {
		if f.typ == http2.FrameData {
			t.Errorf("DATA %q on stream 1 after END_STREAM", f.data)
		}
	}
}

// TestOpenStreamBehindStuckWriter: a CONNECT waiting for the write lock, which a writer stuck on
// a peer that does not read holds (simulated by holding the lock), gives up when its context
// ends, rather than at the connection's write watchdog.
func TestOpenStreamBehindStuckWriter(t *testing.T) {
	hc, _ := pipeClient(t)
	hc.wmu.Lock() // the stuck writer
	defer hc.unlockWrite()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	opened := make(chan error, 1)
	go func() {
		_, err := hc.openStream(ctx, connectFields)
		opened <- err
	}()
	select {
	case err := <-opened:
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errConnUnusable) {
			t.Errorf("openStream behind a stuck writer: %v, want its context's error", err)
		}
	case <-time.After(testTimeout()):
		t.Fatal("openStream still waiting after its context ended")
	}
}

// TestRespondBehindStuckWriter: a response waiting for the write lock behind a stuck writer
// gives up when the client resets the stream.
func TestRespondBehindStuckWriter(t *testing.T) {
	accepted := make(chan error, 1)
	hc, p, _ := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		_, err := req.Accept()
		accepted <- err
		return err
	}))
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	hc.wmu.Lock() // the stuck writer
	defer hc.unlockWrite()
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	testutil.Eventually(t, testTimeout(), "Accept to wait for the write lock", func() bool { return hc.wmuWaiting.Load() > 0 })
	p.must(p.fr.WriteRSTStream(1, http2.ErrCodeCancel))
	select {
	case err := <-accepted:
		if err == nil {
			t.Error("Accept of a reset stream behind a stuck writer succeeded")
		}
	case <-time.After(testTimeout()):
		t.Fatal("Accept still waiting after the client reset the stream")
	}
}
