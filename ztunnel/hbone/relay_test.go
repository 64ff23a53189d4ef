package hbone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// TestRelayHalfClose runs a tunnel through to a real TCP upstream with Relay, the way ztunnel's
// inbound side does, and checks that each FIN travels the whole way: the client's CloseWrite reaches
// the upstream as EOF while the upstream can still answer, and the upstream's close reaches the
// client as end of stream.
func TestRelayHalfClose(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	upDone := make(chan error, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			upDone <- err
			return
		}
		defer c.Close()
		in, err := io.ReadAll(c) // ends only at the client's FIN
		if err != nil {
			upDone <- err
			return
		}
		_, err = fmt.Fprintf(c, "upstream read %d bytes", len(in))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		upDone <- err
	}()
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		var d net.Dialer
		upstream, err := d.DialContext(ctx, "tcp", up.Addr().String())
		if err != nil {
			return errors.Join(ErrUpstreamUnreachable, err)
		}
		stream, err := req.Accept()
		if err != nil {
			upstream.Close()
			return err
		}
		_, _, err = Relay(stream, upstream)
		return err
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	payload := make([]byte, 1<<20)
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("upstream read %d bytes", len(payload)); string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if err := <-upDone; err != nil {
		t.Errorf("upstream: %v", err)
	}
}

// TestServerEndsFirst: the handler answers and returns without waiting for the client; the client
// reads the answer and then end of stream.
func TestServerEndsFirst(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		_, err = io.WriteString(c, "banner")
		return err
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "banner" {
		t.Errorf("got %q", got)
	}
}

func TestClientReadDeadline(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	// The stream went back to the pool once closed.
	conn.Close()
	if s := cl.Stats(target(srv).Key); s.Streams != 0 {
		t.Errorf("streams = %d after close, want 0", s.Streams)
	}
}

func TestDialCanceled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts nothing: the TLS handshake never completes
	cfg := DefaultClientConfig()
	cfg.DialTimeout = 50 * time.Millisecond
	cl := newTestClient(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tg := Target{Key: Key{Src: idClient, Dst: idServer, Addr: addrOf(t, ln)}, Authority: target(&testServer{}).Authority}
	if _, err := cl.Dial(ctx, tg); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with canceled context = %v, want context.Canceled", err)
	}
	// Without cancellation the shared dial times out on its own and the pool forgets the key.
	if _, err := cl.Dial(context.Background(), tg); err == nil {
		t.Error("Dial to a server that never handshakes succeeded")
	}
	testutil.Eventually(t, testTimeout(), "the pool to forget the key", func() bool { return cl.Stats(tg.Key) == PoolStats{} })
}

// TestRelayUpstreamClosesFirst: the upstream answers and closes while the client has not
// half-closed (an HTTP/1.0 response delimited by close). The client must read the answer and then
// end of stream, not hang.
func TestRelayUpstreamClosesFirst(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nbye")
		c.Close()
	}()
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		var d net.Dialer
		upstream, err := d.DialContext(ctx, "tcp", up.Addr().String())
		if err != nil {
			return errors.Join(ErrUpstreamUnreachable, err)
		}
		stream, err := req.Accept()
		if err != nil {
			upstream.Close()
			return err
		}
		Relay(stream, upstream)
		return nil
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /"); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := "HTTP/1.0 200 OK\r\n\r\nbye"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestServerStreamAfterEnd: once the server has closed a stream, using it fails cleanly, and the
// Handler's context ends with the stream.
func TestServerStreamAfterEnd(t *testing.T) {
	checked := make(chan []error, 1)
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		c.Close() // ends the stream both ways; the handler goes on
		select {
		case <-ctx.Done():
		case <-time.After(testTimeout()):
		}
		_, werr := c.Write([]byte("late"))
		_, rerr := c.Read(make([]byte, 1))
		checked <- []error{werr, rerr, c.SetReadDeadline(time.Now()), c.SetWriteDeadline(time.Now())}
		return nil
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	if got, err := io.ReadAll(conn); err != nil || len(got) != 0 {
		t.Fatalf("ReadAll = %q, %v; want end of stream", got, err)
	}
	for i, err := range <-checked {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("call %d after end = %v, want net.ErrClosed", i, err)
		}
	}
}

// TestServerHalfClose: the server half-closes first and keeps reading; the client reads end of
// stream, keeps sending, and its own half-close reaches the server.
func TestServerHalfClose(t *testing.T) {
	got := make(chan string, 1)
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		if _, err := io.WriteString(c, "banner"); err != nil {
			return err
		}
		if err := c.CloseWrite(); err != nil {
			return err
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write after CloseWrite = %v, want net.ErrClosed", err)
		}
		in, err := io.ReadAll(c)
		got <- string(in)
		return err
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "banner" {
		t.Fatalf("ReadAll = %q, %v; want banner then end of stream", b, err)
	}
	// The server's end does not stop the client: 1 MiB more, past the first window update.
	payload := bytes.Repeat([]byte("after the server's FIN;"), 1<<20/23)
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != string(payload) {
		t.Errorf("server read %d bytes, want %d", len(s), len(payload))
	}
}

// TestCloseInterruptsRead: Close from another goroutine ends a Read blocked on the socket (the
// Read holds the connection's read token), and the connection stays usable: the interruption
// leaves no deadline behind.
func TestCloseInterruptsRead(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cl := newTestClient(t, DefaultClientConfig(), nil)
	for range 3 {
		conn := mustDial(t, cl, target(srv))
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Read(make([]byte, 1))
			errc <- err
		}()
		// Once the Read waits (holding the token or waiting for its holder), Close must end it.
		st := conn.(*stream)
		testutil.Eventually(t, testTimeout(), "the Read to wait", func() bool {
			st.c.mu.Lock()
			defer st.c.mu.Unlock()
			return st.waitBuf != nil
		})
		conn.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Read after Close = %v, want net.ErrClosed", err)
			}
		case <-time.After(testTimeout()):
			t.Fatal("Read still blocked after Close")
		}
	}
	// The same pooled connection still carries data.
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	io.WriteString(conn, "ok")
	conn.CloseWrite()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "ok" {
		t.Errorf("echo = %q, %v", b, err)
	}
	if s := cl.Stats(target(srv).Key); s.Conns != 1 {
		t.Errorf("stats %+v, want one connection throughout", s)
	}
}

// TestCloseWriteAfterReset: CloseWrite on a tunnel the peer reset reports the reset, as
// shutdown(2) on a reset TCP socket does, instead of claiming to have sent END_STREAM.
func TestCloseWriteAfterReset(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		return c.(*stream).resetForTest()
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	c := mustDial(t, cl, target(srv))
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testTimeout()))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read on a reset tunnel returned no error")
	}
	var re resetError
	if err := c.CloseWrite(); !errors.As(err, &re) {
		t.Errorf("CloseWrite after reset: %v, want the reset", err)
	}
}

// resetForTest resets s (RST_STREAM CANCEL), as a deadline would.
func (s *stream) resetForTest() error {
	c := s.c
	c.mu.Lock()
	c.resetLocked(s, http2.ErrCodeCancel, net.ErrClosed, true)
	c.mu.Unlock()
	c.flushCtrl()
	return nil
}

// TestCloseWriteAfterStopSending: CloseWrite after the server ended and asked us to stop sending
// (END_STREAM, then RST_STREAM NO_ERROR) is an orderly end, not an error.
func TestCloseWriteAfterStopSending(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		_, err := req.Accept()
		return err // returning closes: END_STREAM, then RST_STREAM NO_ERROR
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	c := mustDial(t, cl, target(srv))
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testTimeout()))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatal(err)
	}
	s := c.(*stream)
	testutil.Eventually(t, testTimeout(), "the stream to record its write error", func() bool {
		s.c.mu.Lock()
		defer s.c.mu.Unlock()
		return s.werr != nil
	})
	if err := c.CloseWrite(); err != nil {
		t.Errorf("CloseWrite after stop sending: %v", err)
	}
}

// TestIdleSocketRelayHoldsNoBuffer: a relay between two sockets takes a buffer for the bytes
// that move and gives it back while the connection is idle, so that idle connections (most of a
// mesh's) cost no relay buffer; the bytes, the half-close and the end still go through.
func TestIdleSocketRelayHoldsNoBuffer(t *testing.T) {
	tcpPair := func() (net.Conn, net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	app, a := tcpPair()
	b, upstream := tcpPair()
	base := relayBufsOut.Load()
	done := make(chan error, 1)
	go func() { _, _, err := Relay(a, b); done <- err }()
	for _, msg := range []string{"request", "another"} {
		if _, err := io.WriteString(app, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(upstream, got); err != nil || string(got) != msg {
			t.Fatalf("upstream read %q, %v", got, err)
		}
		if _, err := upstream.Write(got); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, got); err != nil || string(got) != msg {
			t.Fatalf("app read %q, %v", got, err)
		}
		testutil.Eventually(t, testTimeout(), "the idle relay to give its buffers back", func() bool { return relayBufsOut.Load() == base })
	}
	app.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(upstream); err != nil || len(rest) != 0 {
		t.Fatalf("upstream after the app's FIN: %q, %v", rest, err)
	}
	upstream.Close()
	if err := <-done; err != nil {
		t.Errorf("Relay = %v", err)
	}
	if n := relayBufsOut.Load(); n != base {
		t.Errorf("%d relay buffers not given back after the relay ended", n-base)
	}
}

// TestIdleTunnelRelayHoldsNoBuffer: the server side of a tunnel relayed to an upstream socket
// holds no relay buffer while the tunnel is idle, in either direction (a tunnel's Read used to
// lend its buffer while it waited: 32 KiB per idle connection); bytes and the end still go
// through.
func TestIdleTunnelRelayHoldsNoBuffer(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	relayed := make(chan error, 1)
	srv := startServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		var d net.Dialer
		upstream, err := d.DialContext(ctx, "tcp", up.Addr().String())
		if err != nil {
			return errors.Join(ErrUpstreamUnreachable, err)
		}
		stream, err := req.Accept()
		if err != nil {
			upstream.Close()
			return err
		}
		_, _, err = Relay(stream, upstream)
		relayed <- err
		return err
	}))
	base := relayBufsOut.Load()
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn := mustDial(t, cl, target(srv))
	defer conn.Close()
	for _, msg := range []string{"request", "another", string(make([]byte, 100<<10))} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: %d bytes back, %v", len(msg), len(got), err)
		}
		testutil.Eventually(t, testTimeout(), "the idle relay to give its buffers back", func() bool { return relayBufsOut.Load() == base })
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
		t.Fatalf("after the client's end: %q, %v", rest, err)
	}
	if err := <-relayed; err != nil {
		t.Errorf("Relay = %v", err)
	}
}
