package hbone

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServeCONNECT feeds arbitrary request lines and headers to the server's request checks. They
// must never panic, must answer only 200, 400 or 401, and must hand the Handler only a CONNECT
// whose authority is the ip:port it was given.
func FuzzServeCONNECT(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", `for="1.2.3.4:5"`, "00-abc-def-01", true)
	f.Add("CONNECT", "[::1]:15008", "", "", true)
	f.Add("GET", "10.0.0.1:80", "", "", true)
	f.Add("CONNECT", "10.0.0.1", "", "", true)
	f.Add("CONNECT", "host:80", "", "", true)
	f.Add("CONNECT", "[fe80::1%eth0]:80", "", "", true)
	f.Add("CONNECT", "10.0.0.1:80", "", "", false)
	f.Fuzz(func(t *testing.T, method, authority, forwarded, traceparent string, withPeer bool) {
		fields := []hpack.HeaderField{
			{Name: ":method", Value: method},
			{Name: ":authority", Value: authority},
			{Name: "forwarded", Value: forwarded},
			{Name: "traceparent", Value: traceparent},
		}
		var ci connInfo
		if withPeer {
			ci.peer = idClient
		}
		req, status := parseRequest(fields, ci)
		switch status {
		case http.StatusOK:
			if req == nil {
				t.Fatal("200 without a request")
			}
			want, err := netip.ParseAddrPort(authority)
			if err != nil || req.Authority != want || method != http.MethodConnect || !withPeer {
				t.Fatalf("handler got authority %v for %q %q (peer %v)", req.Authority, method, authority, withPeer)
			}
			if req.Forwarded != forwarded || req.Traceparent != traceparent {
				t.Fatalf("forwarded %q traceparent %q, want %q %q", req.Forwarded, req.Traceparent, forwarded, traceparent)
			}
		case http.StatusBadRequest, http.StatusUnauthorized:
			if req != nil {
				t.Fatalf("request built, then %d", status)
			}
		default:
			t.Fatalf("status %d", status)
		}
	})
}

// FuzzServerFrames feeds arbitrary frames, after a valid preface, to the server's connection. It
// must never panic or hang, whatever the frames say.
func FuzzServerFrames(f *testing.F) {
	frames := func(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) []byte {
		var buf, hb bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		fr.AllowIllegalWrites = true
		write(fr, hpack.NewEncoder(&hb), &hb)
		return buf.Bytes()
	}
	connect := func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, end bool) {
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: end, EndHeaders: true})
	}
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		connect(fr, enc, hb, 1, false)
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteWindowUpdate(1, 100)
		fr.WriteData(1, true, []byte("bye"))
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		connect(fr, enc, hb, 1, true)
		fr.WritePing(false, [8]byte{1})
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		connect(fr, enc, hb, 3, false)
		fr.WriteDataPadded(3, false, []byte("x"), make([]byte, 7))
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		fr.WriteContinuation(3, true, []byte{0x82})
	}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, frames []byte) {
		a, b := net.Pipe()
		srv := &Server{cfg: DefaultServerConfig(), handler: echoHandler, log: slog.New(slog.DiscardHandler)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveH2(context.Background(), a, nil, connInfo{peer: idClient})
			a.Close()
		}()
		go io.Copy(io.Discard, b)
		fr := http2.NewFramer(b, nil)
		if _, err := io.WriteString(b, http2.ClientPreface); err == nil && fr.WriteSettings() == nil {
			b.Write(frames)
		}
		b.Close()
		<-done
	})
}
