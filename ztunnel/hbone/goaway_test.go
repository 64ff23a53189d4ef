package hbone

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"golang.org/x/net/http2"
)

// After a graceful shutdown's GOAWAY, a stream that crossed it is refused, and the GOAWAY that
// closes the connection later does not claim it (RFC 9113 §6.8: last-stream-id never increases).
func TestGoAwayLastNeverIncreases(t *testing.T) {
	a, b := net.Pipe()
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		<-release
		c.Close()
		return nil
	})
	cfg := DefaultServerConfig()
	srv := &Server{cfg: cfg, handler: h, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.serveH2(ctx, a, nil, connInfo{peer: idClient, local: a.LocalAddr(), remote: a.RemoteAddr()})
		a.Close()
	}()
	p := newRawPeer(t, b)
	t.Cleanup(func() { b.Close(); <-done })
	go p.readFrames()
	io.WriteString(b, http2.ClientPreface)
	p.must(p.fr.WriteSettings())
	p.next(ofType(http2.FrameSettings, 0))
	p.must(p.fr.WriteSettingsAck())
	p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	p.next(ofType(http2.FrameHeaders, 1))
	cancel()
	g1 := p.next(ofType(http2.FrameGoAway, 0))
	t.Logf("first GOAWAY last=%d code=%v", g1.last, g1.code)
	// A HEADERS that crossed the GOAWAY.
	p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:80")
	r := p.next(ofType(http2.FrameRSTStream, 3))
	t.Logf("stream 3: RST %v", r.code)
	close(release)
	p.must(p.fr.WriteData(1, true, nil))
	g2 := p.closed()
	if g2 != nil {
		t.Logf("last GOAWAY last=%d code=%v", g2.last, g2.code)
		if g2.last > g1.last {
			t.Errorf("GOAWAY last-stream-id increased %d -> %d (RFC 9113 §6.8)", g1.last, g2.last)
		}
	}
}
