package hbone

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// bufferedLen returns how many received bytes wait unread in c, a tunnel of this package.
func bufferedLen(c Conn) int {
	s := c.(*stream)
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.recvLen
}

// smallWindows makes the connection window one stream window (1 MiB), so that a leak of part of
// it shows at once.
func smallWindows(f *FlowConfig) { f.StreamWindowMiB, f.ConnWindowMultiple = 1, 1 }

// TestResetReturnsConnWindowServer: a server stream that ends with bytes buffered and unread gives
// them back to the connection window, so the next tunnel on the connection is not starved.
func TestResetReturnsConnWindowServer(t *testing.T) {
	cfg := DefaultServerConfig()
	smallWindows(&cfg.FlowConfig)
	const unread = 768 << 10
	idle := make(chan Conn, 1)
	gate := make(chan struct{})
	got := make(chan int64, 1)
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		if req.Authority.Port() == 1 {
			idle <- c
			<-gate // never reads; returning closes the stream
			return nil
		}
		n, err := io.Copy(io.Discard, c)
		got <- n
		return err
	}))
	ccfg := DefaultClientConfig()
	smallWindows(&ccfg.FlowConfig)
	cl := newTestClient(t, ccfg, nil)
	tg := target(srv)
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:1")
	c1 := mustDial(t, cl, tg)
	if _, err := c1.Write(make([]byte, unread)); err != nil {
		t.Fatal(err)
	}
	sc := <-idle
	testutil.Eventually(t, testTimeout(), "the unread bytes buffered at the server", func() bool { return bufferedLen(sc) == unread })
	close(gate)
	io.Copy(io.Discard, c1)
	c1.Close()

	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	if st := cl.Stats(tg.Key); st.Conns != 1 {
		t.Fatalf("pool %+v: want the one connection", st)
	}
	go func() {
		c2.Write(make([]byte, 1<<20))
		c2.CloseWrite()
	}()
	select {
	case n := <-got:
		if n != 1<<20 {
			t.Errorf("second tunnel delivered %d bytes, want %d", n, 1<<20)
		}
	case <-time.After(testTimeout()):
		t.Fatal("second tunnel stalled: the reset stream's unread bytes were not returned to the connection window")
	}
}

// TestResetReturnsConnWindowClient: the same on the client: a tunnel closed without reading what
// the server sent does not shrink the connection window.
func TestResetReturnsConnWindowClient(t *testing.T) {
	cfg := DefaultServerConfig()
	smallWindows(&cfg.FlowConfig)
	const unread = 768 << 10
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		n := unread
		if req.Authority.Port() == 2 {
			n = 1 << 20
		}
		c.Write(make([]byte, n))
		c.CloseWrite()
		<-ctx.Done()
		return nil
	}))
	ccfg := DefaultClientConfig()
	smallWindows(&ccfg.FlowConfig)
	cl := newTestClient(t, ccfg, nil)
	tg := target(srv)
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:1")
	c1 := mustDial(t, cl, tg)
	testutil.Eventually(t, testTimeout(), "the unread bytes buffered at the client", func() bool { return bufferedLen(c1) == unread })
	c1.Close()

	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(testTimeout()))
	if n, err := io.Copy(io.Discard, c2); n != 1<<20 {
		t.Fatalf("second tunnel read %d of %d bytes: %v", n, 1<<20, err)
	}
}

// TestSlowReadersDoNotStarveConn: streams whose readers are slow hold most of the connection
// window unread; a stream that reads still gets WINDOW_UPDATEs for the connection, not only
// once half the whole window was read.
func TestSlowReadersDoNotStarveConn(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.StreamWindowMiB, cfg.ConnWindowMultiple = 1, 4
	const busy = 4 << 20
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		n := 1 << 20 // a slow tunnel: its client does not read
		if req.Authority.Port() == 2 {
			n = busy
		}
		c.Write(make([]byte, n))
		c.CloseWrite()
		<-ctx.Done()
		return nil
	}))
	ccfg := DefaultClientConfig()
	ccfg.StreamWindowMiB, ccfg.ConnWindowMultiple = 1, 4
	cl := newTestClient(t, ccfg, nil)
	tg := target(srv)
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:1")
	for range 3 {
		c := mustDial(t, cl, tg)
		defer c.Close()
		testutil.Eventually(t, testTimeout(), "1 MiB buffered on the stream", func() bool { return bufferedLen(c) == 1<<20 })
	}
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	if st := cl.Stats(tg.Key); st.Conns != 1 {
		t.Fatalf("pool %+v: want the one connection", st)
	}
	c2.SetReadDeadline(time.Now().Add(testTimeout()))
	if n, err := io.Copy(io.Discard, c2); n != busy {
		t.Fatalf("busy tunnel read %d of %d bytes: %v", n, busy, err)
	}
}

func TestRefreshWindow(t *testing.T) {
	const w = 4 << 20
	for _, tc := range []struct {
		unacked, remaining int64
		want               bool
	}{
		{0, 0, false},
		{w / 2, w / 2, true},       // half the window read
		{1 << 20, 3 << 20, false},  // the peer has plenty left
		{1 << 20, 1 << 20, true},   // read as much as the peer may still send
		{1 << 20, 0, true},         // the peer ran dry
		{4 << 10, 32 << 10, false}, // not in slivers while the peer has room
		{4 << 10, 4 << 10, true},   // ... but the peer is about to run dry
		{minRefresh, minRefresh, true},
	} {
		if got := refreshWindow(tc.unacked, tc.remaining, w); got != tc.want {
			t.Errorf("refreshWindow(%d, %d, %d) = %v, want %v", tc.unacked, tc.remaining, w, got, tc.want)
		}
	}
}
