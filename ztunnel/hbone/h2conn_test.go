package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// These tests drive one end of our HTTP/2 connection frame by frame with x/net's Framer, over
// net.Pipe without TLS: flow control, GOAWAY, and that protocol errors end a stream or the
// connection as RFC 9113 says.

// rawFrame is what the raw peer read, copied out of the Framer's buffers.
type rawFrame struct {
	typ    http2.FrameType
	id     uint32
	flags  http2.Flags
	data   []byte // DATA payload, PING data
	code   http2.ErrCode
	last   uint32 // GOAWAY
	incr   uint32 // WINDOW_UPDATE
	fields map[string]string
	set    map[http2.SettingID]uint32
}

// rawPeer is the other end of a connection under test.
type rawPeer struct {
	t      *testing.T
	conn   net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	ebuf   bytes.Buffer
	frames chan rawFrame
}

func newRawPeer(t *testing.T, conn net.Conn) *rawPeer {
	p := &rawPeer{t: t, conn: conn, fr: http2.NewFramer(conn, conn), frames: make(chan rawFrame, 4096)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.fr.AllowIllegalWrites = true
	p.enc = hpack.NewEncoder(&p.ebuf)
	return p
}

// readFrames copies every frame the peer reads to p.frames, closed at the end of the connection.
func (p *rawPeer) readFrames() {
	defer close(p.frames)
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return
		}
		rf := rawFrame{typ: f.Header().Type, id: f.Header().StreamID, flags: f.Header().Flags}
		switch f := f.(type) {
		case *http2.DataFrame:
			rf.data = bytes.Clone(f.Data())
		case *http2.PingFrame:
			rf.data = bytes.Clone(f.Data[:])
		case *http2.RSTStreamFrame:
			rf.code = f.ErrCode
		case *http2.GoAwayFrame:
			rf.code, rf.last = f.ErrCode, f.LastStreamID
		case *http2.WindowUpdateFrame:
			rf.incr = f.Increment
		case *http2.MetaHeadersFrame:
			rf.typ = http2.FrameHeaders
			rf.fields = map[string]string{}
			for _, hf := range f.Fields {
				rf.fields[hf.Name] = hf.Value
			}
		case *http2.SettingsFrame:
			rf.set = map[http2.SettingID]uint32{}
			f.ForeachSetting(func(s http2.Setting) error { rf.set[s.ID] = s.Val; return nil })
		}
		p.frames <- rf
	}
}

// next returns the next frame that match accepts, skipping others.
func (p *rawPeer) next(match func(rawFrame) bool) rawFrame {
	p.t.Helper()
	timeout := time.After(testTimeout())
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				p.t.Fatal("connection closed while waiting for a frame")
			}
			if match(f) {
				return f
			}
		case <-timeout:
			p.t.Fatal("no matching frame")
		}
	}
}

func ofType(typ http2.FrameType, id uint32) func(rawFrame) bool {
	return func(f rawFrame) bool { return f.typ == typ && f.id == id }
}

// closed waits for the connection to end, returning the GOAWAY seen before, if any.
func (p *rawPeer) closed() *rawFrame {
	p.t.Helper()
	var goAway *rawFrame
	timeout := time.After(testTimeout())
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				return goAway
			}
			if f.typ == http2.FrameGoAway {
				goAway = &f
			}
		case <-timeout:
			p.t.Fatal("connection still open")
		}
	}
}

func (p *rawPeer) headers(id uint32, end bool, fields ...string) {
	p.t.Helper()
	p.ebuf.Reset()
	for i := 0; i < len(fields); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.ebuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawPeer) must(err error) {
	p.t.Helper()
	if err != nil {
		p.t.Fatal(err)
	}
}

// pipeServer serves a Server's HTTP/2 on one end of a pipe and returns a raw client on the other,
// past the preface and the SETTINGS exchange.
func pipeServer(t *testing.T, cfg ServerConfig, h Handler) *rawPeer {
	t.Helper()
	a, b := net.Pipe()
	srv := &Server{cfg: cfg, handler: h, log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.serveH2(context.Background(), a, nil, connInfo{peer: idClient, local: a.LocalAddr(), remote: a.RemoteAddr()})
		a.Close()
	}()
	p := newRawPeer(t, b)
	t.Cleanup(func() { b.Close(); <-done })
	go p.readFrames()
	if _, err := io.WriteString(b, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	p.must(p.fr.WriteSettings())
	set := p.next(ofType(http2.FrameSettings, 0))
	if set.set[http2.SettingMaxConcurrentStreams] != cfg.MaxConcurrentStreams {
		t.Errorf("server SETTINGS %v: want MAX_CONCURRENT_STREAMS %d", set.set, cfg.MaxConcurrentStreams)
	}
	p.must(p.fr.WriteSettingsAck())
	return p
}

// pipeClient runs our client connection on one end of a pipe and returns it with a raw server on
// the other, which has sent settings.
func pipeClient(t *testing.T, settings ...http2.Setting) (*h2conn, *rawPeer) {
	return pipeClientWith(t, true, settings...)
}

// pipeClientWith is pipeClient, without the connection's reader goroutine unless bg is set: then
// only the goroutines that need frames read them.
func pipeClientWith(t *testing.T, bg bool, settings ...http2.Setting) (*h2conn, *rawPeer) {
	t.Helper()
	a, b := net.Pipe()
	hc := newH2Conn(a, nil, false, DefaultClientConfig().FlowConfig)
	p := newRawPeer(t, b)
	preface := make(chan error, 1)
	go func() {
		buf := make([]byte, len(http2.ClientPreface))
		_, err := io.ReadFull(b, buf)
		if err == nil && string(buf) != http2.ClientPreface {
			err = errors.New("bad preface")
		}
		preface <- err
		if err == nil {
			p.readFrames()
		}
	}()
	if err := hc.start(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := <-preface; err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	if bg {
		go func() { hc.readLoop(); close(done) }()
	} else {
		close(done)
	}
	t.Cleanup(func() { hc.close(); b.Close(); <-done })
	// On a pipe a write waits for its reader: without readLoop, the one below.
	wrote := make(chan error, 1)
	go func() { wrote <- p.fr.WriteSettings(settings...) }()
	if !bg {
		hc.mu.Lock()
		hc.takeTokenLocked(nil, false)
		err := hc.readFramesLocked(func() bool { return hc.sawSettings })
		hc.releaseTokenLocked(true)
		hc.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := hc.waitSettings(nil); err != nil {
		t.Fatal(err)
	}
	p.must(<-wrote)
	return hc, p
}

var connectFields = []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.7:8080"}}

// TestH2ServerConnectionErrors: frames that break the protocol end the connection with GOAWAY and
// the matching code (RFC 9113 §5.4.1).
func TestH2ServerConnectionErrors(t *testing.T) {
	tests := []struct {
		name string
		send func(p *rawPeer)
		want http2.ErrCode
	}{
		{name: "DATA on stream 0", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteData(0, false, []byte("x")))
		}},
		{name: "DATA on an idle stream", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteData(5, false, []byte("x")))
		}},
		{name: "HEADERS on an even stream", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.headers(2, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
		}},
		{name: "stream IDs going back", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
			p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
		}},
		{name: "CONTINUATION without HEADERS", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteContinuation(1, true, []byte{0x82}))
		}},
		{name: "RST_STREAM on an idle stream", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteRSTStream(7, http2.ErrCodeCancel))
		}},
		{name: "connection window overflow", want: http2.ErrCodeFlowControl, send: func(p *rawPeer) {
			p.must(p.fr.WriteWindowUpdate(0, 1<<31-1))
		}},
		{name: "PUSH_PROMISE from a client", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteRawFrame(http2.FramePushPromise, http2.FlagPushPromiseEndHeaders, 1, []byte{0, 0, 0, 2}))
		}},
		{name: "frame over SETTINGS_MAX_FRAME_SIZE", want: http2.ErrCodeFrameSize, send: func(p *rawPeer) {
			// The server stops reading at the header: the write fails when it hangs up.
			p.fr.WriteRawFrame(http2.FramePing, 0, 0, make([]byte, maxFrameRead+1))
		}},
		{name: "bad SETTINGS value", want: http2.ErrCodeProtocol, send: func(p *rawPeer) {
			p.must(p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100}))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pipeServer(t, DefaultServerConfig(), echoHandler)
			tt.send(p)
			ga := p.closed()
			if ga == nil || ga.code != tt.want {
				t.Fatalf("GOAWAY %+v, want code %v", ga, tt.want)
			}
		})
	}
}

// TestH2FirstFrameSettings: a client whose first frame is not SETTINGS breaks the preface.
func TestH2FirstFrameSettings(t *testing.T) {
	a, b := net.Pipe()
	srv := &Server{cfg: DefaultServerConfig(), handler: echoHandler, log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.serveH2(context.Background(), a, nil, connInfo{peer: idClient})
	}()
	p := newRawPeer(t, b)
	go p.readFrames()
	io.WriteString(b, http2.ClientPreface)
	p.must(p.fr.WritePing(false, [8]byte{1}))
	if ga := p.closed(); ga == nil || ga.code != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY %+v, want PROTOCOL_ERROR", ga)
	}
	b.Close()
	<-done
}

// TestH2ServerStreamErrors: errors confined to one stream reset it and leave the connection and
// its other streams working.
func TestH2ServerStreamErrors(t *testing.T) {
	p := pipeServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		if req.Authority.Port() != 81 {
			return echoHandler(ctx, req)
		}
		// Reads to the client's end and keeps its own side open.
		c, err := req.Accept()
		if err != nil {
			return err
		}
		io.Copy(io.Discard, c)
		<-ctx.Done()
		return nil
	}))
	// A tunnel that keeps working throughout.
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	if f := p.next(ofType(http2.FrameHeaders, 1)); f.fields[":status"] != "200" {
		t.Fatalf("response %v", f.fields)
	}

	// Trailers: CONNECT streams carry only DATA after the request.
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	p.next(ofType(http2.FrameHeaders, 3))
	p.headers(3, true, "x-trailer", "1")
	if f := p.next(ofType(http2.FrameRSTStream, 3)); f.code != http2.ErrCodeProtocol {
		t.Errorf("trailers: RST_STREAM %v, want PROTOCOL_ERROR", f.code)
	}

	// DATA after END_STREAM, on a stream the server keeps open.
	p.headers(5, false, ":method", "CONNECT", ":authority", "10.0.0.7:81")
	p.next(ofType(http2.FrameHeaders, 5))
	p.must(p.fr.WriteData(5, true, []byte("a")))
	p.must(p.fr.WriteData(5, false, []byte("b")))
	if f := p.next(ofType(http2.FrameRSTStream, 5)); f.code != http2.ErrCodeStreamClosed {
		t.Errorf("DATA after END_STREAM: RST_STREAM %v, want STREAM_CLOSED", f.code)
	}

	// Malformed requests get 400 and never reach the Handler.
	p.headers(7, true, ":method", "CONNECT", ":authority", "10.0.0.7:80", ":path", "/")
	if f := p.next(ofType(http2.FrameHeaders, 7)); f.fields[":status"] != "400" {
		t.Errorf(":path on CONNECT: status %v, want 400", f.fields)
	}
	p.headers(9, true, ":method", "CONNECT", ":authority", "10.0.0.7:80", "connection", "close")
	if f := p.next(ofType(http2.FrameHeaders, 9)); f.fields[":status"] != "400" {
		t.Errorf("connection header: status %v, want 400", f.fields)
	}

	// PING is answered with the same data.
	p.must(p.fr.WritePing(false, [8]byte{'p', 'i', 'n', 'g'}))
	if f := p.next(ofType(http2.FramePing, 0)); !f.flags.Has(http2.FlagPingAck) || string(f.data[:4]) != "ping" {
		t.Errorf("PING answer %+v", f)
	}

	// Stream 1 still echoes.
	p.must(p.fr.WriteData(1, true, []byte("still fine")))
	if f := p.next(ofType(http2.FrameData, 1)); string(f.data) != "still fine" {
		t.Errorf("echo %q", f.data)
	}
}

// TestH2ServerConcurrencyLimit: streams past MAX_CONCURRENT_STREAMS are refused, and their slot is
// free again once a tunnel ends.
func TestH2ServerConcurrencyLimit(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxConcurrentStreams = 1
	p := pipeServer(t, cfg, echoHandler)
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	p.next(ofType(http2.FrameHeaders, 1))
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	if f := p.next(ofType(http2.FrameRSTStream, 3)); f.code != http2.ErrCodeRefusedStream {
		t.Errorf("RST_STREAM %v, want REFUSED_STREAM", f.code)
	}
	p.must(p.fr.WriteData(1, true, nil))
	p.next(func(f rawFrame) bool { return f.id == 1 && f.flags.Has(http2.FlagDataEndStream) })
	// The handler returns after its END_STREAM, which frees the slot: poll with new streams.
	id := uint32(5)
	testutil.Eventually(t, testTimeout(), "a stream slot freed", func() bool {
		p.headers(id, true, ":method", "CONNECT", ":authority", "10.0.0.7:80")
		f := p.next(func(f rawFrame) bool {
			return f.id == id && (f.typ == http2.FrameHeaders || f.typ == http2.FrameRSTStream)
		})
		id += 2
		return f.typ == http2.FrameHeaders
	})
}

// TestH2ServerWindowUpdates: the server returns window as the Handler reads, in batches, and a
// client that overruns the stream window gets FLOW_CONTROL_ERROR.
func TestH2ServerWindowUpdates(t *testing.T) {
	release := make(chan struct{})
	read := make(chan int, 1)
	p := pipeServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		if req.Authority.Port() == 2 {
			<-release // reads nothing: the window runs out
			return nil
		}
		n, err := io.Copy(io.Discard, c)
		read <- int(n)
		return err
	}))
	window := int(DefaultServerConfig().streamWindow())
	chunk := make([]byte, 16<<10)

	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
	p.next(ofType(http2.FrameHeaders, 1))
	sent := 0
	for sent < window*3/4 {
		p.must(p.fr.WriteData(1, false, chunk))
		sent += len(chunk)
	}
	// One update in a batch (before END_STREAM: a finished stream gets none), none for the
	// connection yet (its window is four times larger). The server returns window once it has
	// read half the window or as much as the client may still send, whichever is less; the
	// client has sent 3/4 of the window, so a batch is at least a quarter of it.
	f := p.next(func(f rawFrame) bool { return f.typ == http2.FrameWindowUpdate })
	if f.id != 1 || int(f.incr) < window/4 {
		t.Errorf("WINDOW_UPDATE %+v, want one for stream 1 of at least a quarter of the window %d", f, window/4)
	}
	p.must(p.fr.WriteData(1, true, nil))
	if got := <-read; got != sent {
		t.Fatalf("handler read %d, want %d", got, sent)
	}

	// Overrun: more than the stream window without waiting for updates.
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:2")
	p.next(ofType(http2.FrameHeaders, 3))
	for sent := 0; sent <= window; sent += len(chunk) {
		p.must(p.fr.WriteData(3, false, chunk))
	}
	if f := p.next(ofType(http2.FrameRSTStream, 3)); f.code != http2.ErrCodeFlowControl {
		t.Errorf("RST_STREAM %v, want FLOW_CONTROL_ERROR", f.code)
	}
	close(release)
}

// TestH2ClientFlowControl: our client never sends past the peer's windows, stream or connection,
// and resumes on WINDOW_UPDATE.
func TestH2ClientFlowControl(t *testing.T) {
	hc, p := pipeClient(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	st, opened := openAsync(hc)
	p.next(ofType(http2.FrameHeaders, 1))
	p.headers(1, false, ":status", "200")
	s := <-st
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789"), 7000) // 70000 bytes: past the connection's 65535
	wrote := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		wrote <- err
	}()
	var got []byte
	recv := func(want int) {
		t.Helper()
		for len(got) < want {
			f := p.next(ofType(http2.FrameData, 1))
			got = append(got, f.data...)
		}
		if len(got) != want {
			t.Fatalf("received %d bytes, want exactly %d", len(got), want)
		}
	}
	recv(10) // the stream window
	p.must(p.fr.WriteWindowUpdate(1, 1<<20))
	recv(65535) // now the connection window
	p.must(p.fr.WriteWindowUpdate(0, 10000))
	recv(len(payload))
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Error("payload mismatch")
	}
	// Flow control never held back END_STREAM.
	s.CloseWrite()
	p.next(func(f rawFrame) bool { return f.id == 1 && f.flags.Has(http2.FlagDataEndStream) })
}

func openAsync(hc *h2conn) (<-chan *stream, <-chan error) {
	st, errc := make(chan *stream, 1), make(chan error, 1)
	go func() {
		s, err := hc.openStream(context.Background(), connectFields)
		st <- s
		errc <- err
	}()
	return st, errc
}

// TestH2ClientGoAway: after GOAWAY, streams the server processed go on, the ones it did not fail
// as retryable, new ones are not opened, and the connection closes with its last stream.
func TestH2ClientGoAway(t *testing.T) {
	hc, p := pipeClient(t)
	gone := make(chan struct{})
	hc.onGone = func() { close(gone) }
	st1, err1 := openAsync(hc)
	p.next(ofType(http2.FrameHeaders, 1))
	p.headers(1, false, ":status", "200")
	s1 := <-st1
	if err := <-err1; err != nil {
		t.Fatal(err)
	}
	_, err3 := openAsync(hc)
	p.next(ofType(http2.FrameHeaders, 3))
	p.must(p.fr.WriteGoAway(1, http2.ErrCodeNo, nil))
	if err := <-err3; !errors.Is(err, errConnUnusable) {
		t.Errorf("stream past GOAWAY: %v, want errConnUnusable", err)
	}
	<-gone
	if ok, _, _ := hc.usable(); ok {
		t.Error("connection still takes streams after GOAWAY")
	}
	if _, err := hc.openStream(context.Background(), connectFields); !errors.Is(err, errConnUnusable) {
		t.Errorf("open after GOAWAY: %v, want errConnUnusable", err)
	}
	// Stream 1 still works both ways.
	p.must(p.fr.WriteData(1, true, []byte("bye")))
	if b, err := io.ReadAll(s1); err != nil || string(b) != "bye" {
		t.Errorf("ReadAll = %q, %v", b, err)
	}
	if _, err := io.WriteString(s1, "ok"); err != nil {
		t.Fatal(err)
	}
	if f := p.next(ofType(http2.FrameData, 1)); string(f.data) != "ok" {
		t.Errorf("data %q", f.data)
	}
	s1.CloseWrite()
	// Its end was the connection's last stream.
	p.closed()
}

// TestH2ClientResetAndErrors: a server reset reaches the tunnel's reads and writes; a bad
// response resets the stream; a protocol error ends the connection.
func TestH2ClientResetAndErrors(t *testing.T) {
	hc, p := pipeClient(t)
	st, errc := openAsync(hc)
	p.next(ofType(http2.FrameHeaders, 1))
	p.headers(1, false, ":status", "200")
	s := <-st
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	p.must(p.fr.WriteRSTStream(1, http2.ErrCodeInternal))
	if _, err := s.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") {
		t.Errorf("Read after RST_STREAM = %v", err)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Error("Write after RST_STREAM succeeded")
	}

	// A response without :status.
	_, errc = openAsync(hc)
	p.next(ofType(http2.FrameHeaders, 3))
	p.headers(3, false, "x-no-status", "1")
	if err := <-errc; err == nil {
		t.Error("response without :status accepted")
	}
	p.next(ofType(http2.FrameRSTStream, 3))

	// HEADERS for a stream the client never opened.
	p.headers(9, false, ":status", "200")
	if ga := p.closed(); ga == nil || ga.code != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY %+v, want PROTOCOL_ERROR", ga)
	}
}

// TestH2InterruptHolder: a Read that holds the read token and waits on the socket is interrupted
// by Close (a past read deadline, at a frame boundary), and the connection reads on afterwards.
func TestH2InterruptHolder(t *testing.T) {
	hc, p := pipeClientWith(t, false)
	open := func(id uint32) *stream {
		st, errc := openAsync(hc)
		p.next(ofType(http2.FrameHeaders, id))
		p.headers(id, false, ":status", "200")
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		return <-st
	}
	s1 := open(1)
	errc := make(chan error, 1)
	go func() {
		_, err := s1.Read(make([]byte, 8))
		errc <- err
	}()
	testutil.Eventually(t, testTimeout(), "s1 to wait for a header, holding the read token", func() bool {
		hc.mu.Lock()
		defer hc.mu.Unlock()
		return hc.tHolder == s1 && hc.tState.Load() == readWaitHeader
	})
	s1.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read = %v, want net.ErrClosed", err)
	}
	p.next(ofType(http2.FrameRSTStream, 1))
	// The next stream reads normally: no deadline was left behind.
	s3 := open(3)
	wrote := make(chan error, 1)
	go func() { wrote <- p.fr.WriteData(3, true, []byte("after")) }() // read by ReadAll
	if b, err := io.ReadAll(s3); err != nil || string(b) != "after" {
		t.Errorf("ReadAll = %q, %v", b, err)
	}
	p.must(<-wrote)
}

// tcpServer serves a Server's HTTP/2 (without TLS) on one end of a loopback TCP connection and
// returns the connection and a raw client on the other, which has sent its preface and settings.
// Unlike a pipe, TCP buffers: a peer that stops reading blocks the server's writes only once the
// socket buffers fill, as in production.
func tcpServer(t *testing.T, cfg ServerConfig, h Handler, settings ...http2.Setting) (*h2conn, *rawPeer, net.Conn) {
	t.Helper()
	return tcpServerWrap(t, cfg, h, nil, settings...)
}

// tcpServerWrap is tcpServer with the server's end of the connection wrapped by wrap.
func tcpServerWrap(t *testing.T, cfg ServerConfig, h Handler, wrap func(net.Conn) net.Conn, settings ...http2.Setting) (*h2conn, *rawPeer, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hcc := make(chan *h2conn, 1)
	done := make(chan struct{})
	srv := &Server{cfg: cfg, handler: h, log: slog.New(slog.DiscardHandler)}
	go func() {
		defer close(done)
		a, err := ln.Accept()
		if err != nil {
			close(hcc)
			return
		}
		if wrap != nil {
			a = wrap(a)
		}
		hc := newH2Conn(a, nil, true, cfg.FlowConfig)
		hc.maxStreams = cfg.MaxConcurrentStreams
		ci := connInfo{peer: idClient, local: a.LocalAddr(), remote: a.RemoteAddr()}
		hc.parse = func(fields []hpack.HeaderField) (*Request, int) { return parseRequest(fields, ci) }
		hc.baseCtx = context.Background()
		hc.serve = func(st *stream, req *Request) { go srv.serveStream(st, req) }
		if err := hc.start(time.Now().Add(testTimeout())); err != nil {
			a.Close()
			close(hcc)
			return
		}
		hcc <- hc
		hc.readLoop()
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); <-done })
	p := newRawPeer(t, b)
	if _, err := io.WriteString(b, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	p.must(p.fr.WriteSettings(settings...))
	hc := <-hcc
	if hc == nil {
		t.Fatal("server preface failed")
	}
	return hc, p, b
}

// TestH2HeadersOnClosedStream: HEADERS on a stream that just closed (it may have crossed our
// RST_STREAM) is a stream error, STREAM_CLOSED; the connection carries on.
func TestH2HeadersOnClosedStream(t *testing.T) {
	p := pipeServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		_, err := req.Accept()
		return err // returning closes the stream: END_STREAM, RST_STREAM NO_ERROR
	}))
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	if f := p.next(ofType(http2.FrameRSTStream, 1)); f.code != http2.ErrCodeNo {
		t.Fatalf("RST_STREAM %v, want NO_ERROR", f.code)
	}
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	if f := p.next(func(f rawFrame) bool { return f.id == 1 || f.typ == http2.FrameGoAway }); f.typ != http2.FrameRSTStream || f.code != http2.ErrCodeStreamClosed {
		t.Fatalf("after HEADERS on the closed stream: %+v, want RST_STREAM STREAM_CLOSED", f)
	}
	p.must(p.fr.WritePing(false, [8]byte{'k'}))
	if f := p.next(func(f rawFrame) bool { return f.typ == http2.FramePing || f.typ == http2.FrameGoAway }); f.typ != http2.FramePing {
		t.Fatalf("connection ended: %+v", f)
	}
}
