package hbone

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestControlQueueBounded: a peer that floods PINGs while the write lock is held (a write
// blocked on a peer that does not read) does not grow the control-frame queue without bound: past
// maxCtrlQueue frames the connection ends with ENHANCE_YOUR_CALM.
func TestControlQueueBounded(t *testing.T) {
	hc, p, b := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		return nil
	}))
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	// As a writer blocked on the socket would, hold the write lock: nothing queued can leave.
	hc.wmu.Lock()
	locked := true
	defer func() {
		if locked {
			hc.unlockWrite()
		}
	}()
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	for i := range maxCtrlQueue + 10 {
		fr.WritePing(false, [8]byte{byte(i), byte(i >> 8)})
	}
	wrote := make(chan error, 1)
	go func() { _, err := b.Write(buf.Bytes()); wrote <- err }()
	select {
	case <-hc.done:
	case <-time.After(testTimeout()):
		hc.mu.Lock()
		n := len(hc.ctrl)
		hc.mu.Unlock()
		t.Fatalf("connection still open with %d control frames queued", n)
	}
	hc.unlockWrite() // let fail's GOAWAY go
	locked = false
	if err := hc.closedErr(); err == nil || !strings.Contains(err.Error(), "ENHANCE_YOUR_CALM") {
		t.Errorf("connection ended with %v, want ENHANCE_YOUR_CALM", err)
	}
	b.Close()
	<-wrote
}

// TestWindowUpdatesCoalesce: WINDOW_UPDATEs queued for one stream back to back take one slot.
func TestWindowUpdatesCoalesce(t *testing.T) {
	c := &h2conn{}
	for range 3 {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, id: 1, val: 10})
	}
	c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, id: 0, val: 5})
	if len(c.ctrl) != 2 || c.ctrl[0].val != 30 || c.ctrl[1].val != 5 {
		t.Errorf("queued %+v, want stream 1 +30, connection +5", c.ctrl)
	}
}

// TestShutdownIdleSendsGoAway: shutting down an idle connection while the write lock is taken
// still sends the GOAWAY it queued, once the lock is free, before the socket closes.
func TestShutdownIdleSendsGoAway(t *testing.T) {
	hc, p := idleServer(t)
	hc.wmu.Lock()
	shut := make(chan struct{})
	go func() { hc.shutdown(); close(shut) }()
	<-hc.done
	hc.unlockWrite()
	<-shut
	if f := p.closed(); f == nil || f.code != http2.ErrCodeNo {
		t.Errorf("GOAWAY before close: %+v, want NO_ERROR", f)
	}
}

// TestShutdownAfterLongIdleSendsGoAway: the final GOAWAY is bounded by a write deadline of its
// own, which a deadline that passed earlier does not cut short.
func TestShutdownAfterLongIdleSendsGoAway(t *testing.T) {
	hc, p := idleServer(t)
	hc.wmu.Lock()
	hc.nc.SetWriteDeadline(time.Unix(1, 0))
	shut := make(chan struct{})
	go func() { hc.shutdown(); close(shut) }()
	<-hc.done
	hc.nc.SetWriteDeadline(time.Unix(1, 0)) // still passed when fail's writer gets the lock
	hc.unlockWrite()
	<-shut
	if f := p.closed(); f == nil || f.code != http2.ErrCodeNo {
		t.Errorf("GOAWAY before close: %+v, want NO_ERROR", f)
	}
}

// TestIdleConnWritesOnItsOwn: after an idle spell longer than PingTimeout, a write the TLS stack
// makes on its own from the reading side (its answer to the peer's KeyUpdate) is not refused
// by a write timeout left over from the last write session, and the idle connection stays up.
func TestIdleConnWritesOnItsOwn(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.PingInterval = time.Hour
	cfg.PingTimeout = 250 * time.Millisecond
	hc, p, _ := tcpServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error { return nil }))
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	time.Sleep(4 * cfg.PingTimeout)
	if _, err := hc.nc.Write(nil); err != nil {
		t.Errorf("a write after an idle spell: %v", err)
	}
	if err := hc.closedErr(); err != nil {
		t.Errorf("idle connection ended: %v", err)
	}
}

// idleServer is a server connection over TCP with SETTINGS exchanged and no stream, whose final
// GOAWAY may wait for the write lock as long as the test allows.
func idleServer(t *testing.T) (*h2conn, *rawPeer) {
	t.Helper()
	hc, p, _ := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		return nil
	}))
	go p.readFrames()
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	hc.goAwayWait = testTimeout()
	return hc, p
}

// TestFailGivesUpGoAwayBehindStuckWriter: a connection ending on a protocol error while a writer
// holds the write lock (stuck on a peer that does not read) closes its socket after goAwayWait,
// without the GOAWAY, rather than waiting for the writer.
func TestFailGivesUpGoAwayBehindStuckWriter(t *testing.T) {
	hc, p := idleServer(t)
	hc.goAwayWait = 50 * time.Millisecond // the production value's order, not the tests' default
	hc.wmu.Lock()                         // the stuck writer
	failed := make(chan struct{})
	go func() { hc.fail(errConnGone, http2.ErrCodeProtocol, true); close(failed) }()
	select {
	case <-failed:
	case <-time.After(testTimeout()):
		t.Fatal("fail still waiting for the stuck writer")
	}
	if f := p.closed(); f != nil {
		t.Errorf("GOAWAY %+v went out past a writer holding the lock", f)
	}
	hc.unlockWrite()
}
