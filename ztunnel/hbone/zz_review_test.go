package hbone

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-mesh/ambient/api/identity"
)

// R1: connection receive window leaks when a stream with unread buffered data is reset/closed.
func TestReviewConnWindowLeak(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.StreamWindowMiB, cfg.ConnWindowMultiple = 1, 1
	gate := make(chan struct{})
	got := make(chan int64, 1)
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		if req.Authority.Port() == 1 {
			<-gate // never reads; returning closes the stream
			return nil
		}
		n, err := io.Copy(io.Discard, c)
		got <- n
		return err
	}))
	ccfg := DefaultClientConfig()
	ccfg.StreamWindowMiB, ccfg.ConnWindowMultiple = 1, 1
	cl := newTestClient(t, ccfg, nil)
	tg := target(srv)
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:1")
	c1 := mustDial(t, cl, tg)
	if _, err := c1.Write(make([]byte, 768<<10)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // server buffers it
	close(gate)
	io.Copy(io.Discard, c1)
	c1.Close()
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	t.Logf("conns in pool: %+v", cl.Stats(tg.Key))
	go func() {
		c2.Write(make([]byte, 1<<20))
		c2.CloseWrite()
	}()
	select {
	case n := <-got:
		t.Logf("second tunnel delivered %d bytes", n)
	case <-time.After(5 * time.Second):
		t.Fatal("second tunnel on the same connection stalled: connection window leaked by the reset stream")
	}
}

// R2: Client.Close while a dial is in flight self-deadlocks on Client.mu.
func TestReviewCloseDuringDial(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	c, _ := cas(t)
	cert := c.leaf(t, idClient)
	release := make(chan struct{})
	dial := func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
		<-release
		return defaultDial(ctx, a)
	}
	cl, err := NewClient(DefaultClientConfig(), func(identity.Identity) (Credentials, error) { return staticCreds(cert, c.pool), nil }, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	dialErr := make(chan error, 1)
	go func() { _, err := cl.Dial(ctx, target(srv)); dialErr <- err }()
	time.Sleep(50 * time.Millisecond)
	cl.Close()
	close(release)
	t.Logf("Dial: %v", <-dialErr)
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	go func() { cl.Stats(target(srv).Key); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		for _, g := range bytes.Split(buf[:n], []byte("\n\n")) {
			if bytes.Contains(g, []byte("evict")) {
				t.Logf("%s", g)
			}
		}
		t.Fatal("Client.mu is held forever after Close raced a dial")
	}
}

// tcpServer runs serveH2 on a plain TCP connection and returns the h2conn and a raw client.
func tcpServer(t *testing.T, cfg ServerConfig, h Handler, settings ...http2.Setting) (*h2conn, *rawPeer, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hcc := make(chan *h2conn, 1)
	srv := &Server{cfg: cfg, handler: h, log: slog.New(slog.DiscardHandler)}
	go func() {
		a, err := ln.Accept()
		if err != nil {
			return
		}
		hc := newH2Conn(a, nil, true, cfg.FlowConfig)
		hc.maxStreams = cfg.MaxConcurrentStreams
		ci := connInfo{peer: idClient, local: a.LocalAddr(), remote: a.RemoteAddr()}
		hc.parse = func(fields []hpack.HeaderField) (*Request, int) { return parseRequest(fields, ci) }
		hc.baseCtx = context.Background()
		hc.serve = func(st *stream, req *Request) { go srv.serveStream(st, req) }
		if err := hc.start(time.Now().Add(5 * time.Second)); err != nil {
			t.Error(err)
			return
		}
		hcc <- hc
		hc.readLoop()
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, b)
	io.WriteString(b, http2.ClientPreface)
	p.must(p.fr.WriteSettings(settings...))
	return <-hcc, p, b
}

// R3: a writer woken to take the free token that no longer needs it does not pass it on: nobody
// reads the socket any more (PING unanswered, new streams not served).
func TestReviewTokenLostByWriter(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run("", func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			again := make(chan struct{}, 2)
			readN := make(chan int, 4)
			startWrite := make(chan struct{})
			wrote := make(chan error, 1)
			hold := make(chan struct{})
			defer close(hold)
			hc, p, b := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
				c, err := req.Accept()
				if err != nil {
					return err
				}
				switch req.Authority.Port() {
				case 1:
					buf := make([]byte, 64)
					for {
						n, err := c.Read(buf)
						if err != nil {
							return err
						}
						readN <- n
						select {
						case <-again:
						case <-hold:
							return nil
						}
					}
				case 3:
					<-startWrite
					_, err := c.Write(make([]byte, 300))
					wrote <- err
					<-hold
				default:
					<-hold
				}
				return nil
			}), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
			defer b.Close()
			go p.readFrames()
			p.next(ofType(http2.FrameSettings, 0))
			p.must(p.fr.WriteSettingsAck())
			p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
			p.next(ofType(http2.FrameHeaders, 1))
			p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:3")
			p.next(ofType(http2.FrameHeaders, 3))
			// The reader's first Read gets "a" from readLoop and comes straight back: it holds the token.
			again <- struct{}{}
			p.must(p.fr.WriteData(1, false, []byte("a")))
			<-readN
			eventually(t, time.Second, func() bool {
				hc.mu.Lock()
				defer hc.mu.Unlock()
				return hc.tHeld && hc.tHolder != nil && hc.tHolder.id == 1
			})
			// The writer runs out of stream window and waits as a winWaiter.
			close(startWrite)
			p.next(ofType(http2.FrameData, 3))
			eventually(t, time.Second, func() bool {
				hc.mu.Lock()
				defer hc.mu.Unlock()
				return hc.winWaiters == 1
			})
			time.Sleep(20 * time.Millisecond) // bgTimer has fired (token held) and is disarmed
			// One TCP write: the window for the writer, then data for the reader (holder).
			var buf bytes.Buffer
			fr := http2.NewFramer(&buf, nil)
			fr.WriteWindowUpdate(3, 1000)
			fr.WriteData(1, false, []byte("b"))
			if _, err := b.Write(buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			<-readN // the reader does not Read again
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			hc.mu.Lock()
			var hid uint32 = 999
			if hc.tHolder != nil { hid = hc.tHolder.id } else if hc.tHeld { hid = 0 }
			t.Logf("after: holder=%d tHeld=%v bgIdle=%v bgArmed=%v tQueue=%d winWaiters=%d", hid, hc.tHeld, hc.bgIdle, hc.bgArmed, len(hc.tQueue), hc.winWaiters)
			_ = hid
			hc.mu.Unlock()
			p.must(p.fr.WritePing(false, [8]byte{'x'}))
			p.headers(5, false, ":method", "CONNECT", ":authority", "10.0.0.7:5")
			timeout := time.After(2 * time.Second)
			var sawPing, sawHeaders bool
			for !sawPing || !sawHeaders {
				select {
				case f := <-p.frames:
					sawPing = sawPing || (f.typ == http2.FramePing && f.flags.Has(http2.FlagPingAck))
					sawHeaders = sawHeaders || (f.typ == http2.FrameHeaders && f.id == 5)
				case <-timeout:
					t.Fatalf("nobody reads the connection: PING ack %v, stream 5 response %v", sawPing, sawHeaders)
				}
			}
		})
	}
}

// R4: control-frame acknowledgements queue without bound while a writer is blocked on the socket.
func TestReviewPingFloodQueue(t *testing.T) {
	hold := make(chan struct{})
	hc, p, b := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return nil
			}
		}
	}), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	defer close(hold)
	defer b.Close()
	p.must(p.fr.WriteWindowUpdate(0, 1<<31-1-65535))
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	// Never read: the server's Write blocks in the socket holding the write lock.
	time.Sleep(500 * time.Millisecond)
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	const n = 300000
	for i := 0; i < n; i++ {
		fr.WritePing(false, [8]byte{byte(i)})
	}
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	if _, err := b.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool {
		hc.mu.Lock()
		defer hc.mu.Unlock()
		return len(hc.ctrl) >= n-10
	})
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	hc.mu.Lock()
	t.Logf("sent %d PINGs (%d bytes): %d control frames queued (cap %d, %d bytes); heap %d -> %d MB", n, buf.Len(), len(hc.ctrl), cap(hc.ctrl), cap(hc.ctrl)*int(unsafeSizeofCtrl()), ms0.HeapAlloc>>20, ms1.HeapAlloc>>20)
	hc.mu.Unlock()
	hc.close()
}

func unsafeSizeofCtrl() uintptr { var f [1]ctrlFrame; return uintptr(len(f)) * 20 }

// R1b: the same leak on the client side: a client that closes a tunnel without reading what the
// server sent loses that much of its connection window for good.
func TestReviewConnWindowLeakClient(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.StreamWindowMiB, cfg.ConnWindowMultiple = 1, 1
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		n := 768 << 10
		if req.Authority.Port() == 2 {
			n = 1 << 20
		}
		c.Write(make([]byte, n))
		c.CloseWrite()
		<-ctx.Done()
		return nil
	}))
	ccfg := DefaultClientConfig()
	ccfg.StreamWindowMiB, ccfg.ConnWindowMultiple = 1, 1
	cl := newTestClient(t, ccfg, nil)
	tg := target(srv)
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:1")
	c1 := mustDial(t, cl, tg)
	time.Sleep(200 * time.Millisecond) // the response waits unread in the client
	c1.Close()
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c2)
	t.Logf("second tunnel read %d of %d bytes: %v", n, 1<<20, err)
	if n != 1<<20 {
		t.Fail()
	}
}

// R5: a Write blocked in the socket (peer granted window but stopped reading TCP) ignores its
// write deadline, and another stream's Close blocks behind it on the connection write lock.
func TestReviewWriteDeadlineBlockedSocket(t *testing.T) {
	res := make(chan string, 4)
	hold := make(chan struct{})
	_, p, b := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		if req.Authority.Port() == 3 {
			<-hold
			start := time.Now()
			c.Close()
			res <- "stream 3 Close returned after " + time.Since(start).String()
			return nil
		}
		c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		start := time.Now()
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				res <- "stream 1 Write returned after " + time.Since(start).String() + ": " + err.Error()
				return nil
			}
		}
	}), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	p.must(p.fr.WriteWindowUpdate(0, 1<<31-1-65535))
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:3")
	time.Sleep(500 * time.Millisecond)
	close(hold)
	for i := 0; i < 2; i++ {
		select {
		case r := <-res:
			t.Log(r)
		case <-time.After(3 * time.Second):
			t.Errorf("still blocked after 3s (deadline was 300ms)")
		}
	}
	b.Close()
	for i := 0; i < 2; i++ {
		select {
		case r := <-res:
			t.Log("after the peer closed: ", r)
		case <-time.After(3 * time.Second):
		}
	}
}

// R6: the server counts a stream until its Handler returns, the client until Close: a client that
// opens a tunnel right after closing one is refused, and Dial's retries pick the same connection.
func TestReviewRefusedUnderChurn(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxConcurrentStreams = 1
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		if _, err := req.Accept(); err != nil {
			return err
		}
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // closing the upstream and the like
		return nil
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	c1 := mustDial(t, cl, target(srv))
	c1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c2, err := cl.Dial(ctx, target(srv))
	t.Logf("Dial right after Close: %v (pool %+v)", err, cl.Stats(target(srv).Key))
	if c2 != nil {
		c2.Close()
	}
}

// R7: connection WINDOW_UPDATE only after half the configured connection window was consumed:
// when streams whose reader is slow hold more than half of it unread, the other streams stall.
func TestReviewConnWindowThresholdStall(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.StreamWindowMiB, cfg.ConnWindowMultiple = 1, 4 // 4 MiB connection window
	srv := startServer(t, cfg, HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		n := 1 << 20 // a slow tunnel: its client does not read (yet)
		if req.Authority.Port() == 2 {
			n = 4 << 20
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
	for i := 0; i < 3; i++ {
		c := mustDial(t, cl, tg)
		defer c.Close()
	}
	time.Sleep(300 * time.Millisecond) // 3 MiB wait unread
	tg.Authority = netip.MustParseAddrPort("10.0.0.7:2")
	c2 := mustDial(t, cl, tg)
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c2)
	t.Logf("pool %+v; busy tunnel read %d of %d bytes: %v", cl.Stats(tg.Key), n, 4<<20, err)
	if n != 4<<20 {
		t.Fail()
	}
}
