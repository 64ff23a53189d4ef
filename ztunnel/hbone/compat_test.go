package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/http2"
)

// These tests check the wire format against golang.org/x/net/http2 used directly, so that our
// client and server are each checked against an implementation that is not the other.

// rawClientConn opens an HTTP/2 connection to srv with x/net's transport and a hand-made TLS
// config: none of our client code runs.
func rawClientConn(t *testing.T, srv *testServer) *http2.ClientConn {
	t.Helper()
	c, _ := cas(t)
	tlsCfg := &tls.Config{
		Certificates:       []tls.Certificate{*c.leaf(t, idClient)},
		RootCAs:            c.pool,
		InsecureSkipVerify: true, // the server certificate has no DNS name; identity is checked below
		NextProtos:         []string{"h2"},
		MinVersion:         tls.VersionTLS13,
	}
	tc, err := tls.Dial("tcp", srv.addr.String(), tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].URIs[0].String(); got != idServer.String() {
		t.Fatalf("server presented %s, want %s", got, idServer)
	}
	tr := &http2.Transport{}
	cc, err := tr.NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestRawClientAgainstServer(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cc := rawClientConn(t, srv)

	tests := []struct {
		name      string
		method    string
		authority string
		want      int
	}{
		{name: "connect", method: http.MethodConnect, authority: "10.0.0.7:8080", want: 200},
		{name: "ipv6", method: http.MethodConnect, authority: "[fd00::7]:8080", want: 200},
		{name: "not connect", method: http.MethodPost, authority: "10.0.0.7:8080", want: 400},
		{name: "hostname", method: http.MethodConnect, authority: "example.com:80", want: 400},
		{name: "no port", method: http.MethodConnect, authority: "10.0.0.7", want: 400},
		{name: "port zero", method: http.MethodConnect, authority: "10.0.0.7:0", want: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			req := &http.Request{
				Method: tt.method,
				URL:    &url.URL{Scheme: "https", Host: tt.authority, Path: "/"},
				Host:   tt.authority,
				Header: http.Header{"Forwarded": {`for="10.0.0.1:1234"`}},
				Body:   pr,
			}
			if tt.method == http.MethodConnect {
				req.URL = &url.URL{Host: tt.authority}
			}
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want != 200 {
				pw.Close()
				return
			}
			go func() {
				io.WriteString(pw, "ping over raw h2")
				pw.Close() // END_STREAM
			}()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "ping over raw h2" {
				t.Errorf("echo = %q", got)
			}
		})
	}
}

// TestClientAgainstRawServer points our client at a minimal CONNECT server written here on x/net.
func TestClientAgainstRawServer(t *testing.T) {
	type seen struct{ authority, forwarded string }
	seenc := make(chan seen, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.URL.Path != "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		seenc <- seen{r.Host, r.Header.Get("Forwarded")}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write([]byte(strings.ToUpper(string(buf[:n]))))
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return // returning sends END_STREAM
			}
		}
	})
	addr := rawServer(t, handler)
	cl := newTestClient(t, DefaultClientConfig(), nil)

	tg := Target{
		Key:       Key{Src: idClient, Dst: idServer, Addr: addr},
		Authority: netip.MustParseAddrPort("10.1.2.3:9090"),
		Forwarded: `for="10.0.0.1:1234"`,
	}
	conn, err := cl.Dial(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "hello raw server"); err != nil {
		t.Fatal(err)
	}
	conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "HELLO RAW SERVER" {
		t.Errorf("reply = %q", got)
	}
	if got, want := <-seenc, (seen{"10.1.2.3:9090", tg.Forwarded}); got != want {
		t.Errorf("server saw %+v, want %+v", got, want)
	}
}

// rawServer serves handler with x/net's HTTP/2 server over mutual TLS on loopback: a CONNECT
// server that is not ours.
func rawServer(t *testing.T, handler http.Handler) netip.AddrPort {
	t.Helper()
	c, _ := cas(t)
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{*c.leaf(t, idServer)},
		ClientCAs:    c.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS13,
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	h2 := &http2.Server{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
			go func() {
				// x/net expects a finished handshake, as net/http hands it over.
				if err := conn.(*tls.Conn).Handshake(); err != nil {
					conn.Close()
					return
				}
				h2.ServeConn(conn, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// TestClientAgainstRawServerLarge: megabytes both ways through x/net's server, which advertises
// its own frame size and windows: big frames, flow control and half-close against an
// implementation that is not ours.
func TestClientAgainstRawServerLarge(t *testing.T) {
	addr := rawServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	cl := newTestClient(t, DefaultClientConfig(), nil)
	conn, err := cl.Dial(context.Background(), Target{Key: Key{Src: idClient, Dst: idServer, Addr: addr}, Authority: netip.MustParseAddrPort("10.1.2.3:9090")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{7}).Read(payload)
	go func() {
		for p := payload; len(p) > 0; {
			n := min(len(p), 100<<10) // past one record and one frame per write
			if _, err := conn.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
		conn.CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes differs (got %d bytes)", len(payload), len(got))
	}
}

// TestRawClientAgainstServerLarge: megabytes both ways from x/net's client through our server:
// its frame sizes and flow control against ours.
func TestRawClientAgainstServerLarge(t *testing.T) {
	srv := startServer(t, DefaultServerConfig(), echoHandler)
	cc := rawClientConn(t, srv)
	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: "10.0.0.7:8080"},
		Host:   "10.0.0.7:8080",
		Header: http.Header{},
		Body:   pr,
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	payload := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{9}).Read(payload)
	go func() {
		pw.Write(payload)
		pw.Close() // END_STREAM
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes differs (got %d bytes)", len(payload), len(got))
	}
}
