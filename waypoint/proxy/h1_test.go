package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// h1Fixture is an h1Transport dialling a test server, counting its connections.
type h1Fixture struct {
	tr    *h1Transport
	dials atomic.Int32
	addr  string
}

func newH1Fixture(t *testing.T, addr string) *h1Fixture {
	f := &h1Fixture{addr: addr}
	f.tr = newH1Transport(func(ctx context.Context, a string) (net.Conn, error) {
		f.dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a)
	})
	t.Cleanup(f.tr.close)
	return f
}

func (f *h1Fixture) do(t *testing.T, ctx context.Context, method, body string) (*http.Response, string, error) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+f.addr+"/p", rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func echoServer(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		_, _ = w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestH1KeepAlive(t *testing.T) {
	s := echoServer(t)
	f := newH1Fixture(t, s.Listener.Addr().String())
	for i, body := range []string{"one", "", "three"} {
		resp, got, err := f.do(t, t.Context(), http.MethodPost, body)
		if err != nil || got != body || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %q %v", i, resp, got, err)
		}
	}
	if n := f.dials.Load(); n != 1 {
		t.Fatalf("%d connections for three requests in a row, want 1", n)
	}
}

// A streamed body (unknown length) goes out chunked while the response is read.
func TestH1StreamedBody(t *testing.T) {
	s := echoServer(t)
	f := newH1Fixture(t, s.Listener.Addr().String())
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+f.addr+"/", pr)
	go func() {
		for range 3 {
			_, _ = pw.Write([]byte(strings.Repeat("x", 10000)))
		}
		pw.Close()
	}()
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 30000 {
		t.Fatalf("echoed %d bytes, want 30000", len(b))
	}
	// The connection was reusable: it goes back to the pool once the body's writer is done (which
	// may be just after the response ended), and the next request takes it.
	testutil.Eventually(t, 10*time.Second, "the connection back in the pool", func() bool {
		f.tr.mu.Lock()
		defer f.tr.mu.Unlock()
		h := f.tr.hosts[f.addr]
		return h != nil && len(h.idle) == 1
	})
	if _, got, err := f.do(t, t.Context(), http.MethodGet, ""); err != nil || got != "" {
		t.Fatalf("second request: %q %v", got, err)
	}
	if n := f.dials.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// A server that answers before reading the body it is sent: the exchange ends, the connection
// is not reused.
func TestH1EarlyAnswerToStreamedBody(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	t.Cleanup(s.Close)
	f := newH1Fixture(t, s.Listener.Addr().String())
	pr, pw := io.Pipe()
	defer pw.Close() // never written to the end
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+f.addr+"/", pr)
	go func() { _, _ = pw.Write([]byte("start")) }()
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, _, err := f.do(t, t.Context(), http.MethodGet, ""); err != nil {
		t.Fatal(err)
	}
	if n := f.dials.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the first one was not reusable)", n)
	}
}

// rawServer serves each accepted connection with fn.
func rawServer(t *testing.T, fn func(c net.Conn, br *bufio.Reader)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// A pooled connection the server closed while it was idle: an idempotent request goes again
// on a new one; a POST, which the server may have seen, fails.
func TestH1ServerClosedIdle(t *testing.T) {
	for _, tc := range []struct {
		method string
		ok     bool
	}{{http.MethodGet, true}, {http.MethodPost, false}} {
		t.Run(tc.method, func(t *testing.T) {
			addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				// Answer keep-alive, then close without a word, as an idle timeout does.
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
			f := newH1Fixture(t, addr)
			if _, got, err := f.do(t, t.Context(), tc.method, "a"); err != nil || got != "ok" {
				t.Fatalf("first: %q %v", got, err)
			}
			_, got, err := f.do(t, t.Context(), tc.method, "b")
			if tc.ok && (err != nil || got != "ok" || f.dials.Load() != 2) {
				t.Fatalf("second: %q %v after %d dials, want ok on a second connection", got, err, f.dials.Load())
			}
			if !tc.ok && err == nil {
				t.Fatalf("second: %q, want an error", got)
			}
		})
	}
}

// 1xx responses reach the request's trace; 101 hands the connection over, bytes that came
// with the response first.
func TestH1InformationalAndUpgrade(t *testing.T) {
	addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello ")
		line, _ := br.ReadString('\n')
		_, _ = io.WriteString(c, strings.ToUpper(line))
	})
	f := newH1Fixture(t, addr)
	var hints []string
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}})
	if _, got, err := f.do(t, ctx, http.MethodGet, ""); err != nil || got != "ok" || len(hints) != 1 || hints[0] != "</a.css>; rel=preload" {
		t.Fatalf("got %q %v, hints %q", got, err, hints)
	}

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Upgrade", "echo")
	req.Header.Set("Connection", "Upgrade")
	resp, err := f.tr.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatal("a 101 response's body is not the connection")
	}
	defer rw.Close()
	if _, err := io.WriteString(rw, "world\n"); err != nil {
		t.Fatal(err)
	}
	got, _ := bufio.NewReader(rw).ReadString('\n')
	if got != "hello WORLD\n" {
		t.Fatalf("upgraded stream read %q", got)
	}
}

// maxConns bounds connections per endpoint: a request waits for the busy one.
func TestH1MaxConns(t *testing.T) {
	release, first := make(chan struct{}), make(chan struct{})
	var inflight atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if inflight.Add(1) > 1 {
			t.Error("two requests at once over one connection's bound")
		}
		if r.URL.Query().Get("wait") != "" {
			close(first)
			<-release
		}
		inflight.Add(-1)
	}))
	t.Cleanup(s.Close)
	f := newH1Fixture(t, s.Listener.Addr().String())
	f.tr = f.tr.clone(1)
	t.Cleanup(f.tr.close)
	var wg sync.WaitGroup
	wg.Go(func() {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+f.addr+"/?wait=1", nil)
		resp, err := f.tr.RoundTrip(req)
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
	})
	<-first // the one connection is busy
	// A waiting request gives up at its context's end.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { _, _, err := f.do(t, ctx, http.MethodGet, ""); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiting request: %v", err)
	}
	go func() { _, _, err := f.do(t, t.Context(), http.MethodGet, ""); done <- err }()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := f.dials.Load(); n != 1 {
		t.Fatalf("%d connections under a bound of 1", n)
	}
}

// A body closed before its end, or a context that ends, closes the connection.
func TestH1AbandonedExchanges(t *testing.T) {
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("stall") != "" {
			<-stall
			return
		}
		_, _ = w.Write([]byte(strings.Repeat("y", 100000)))
	}))
	t.Cleanup(s.Close)
	f := newH1Fixture(t, s.Listener.Addr().String())
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+f.addr+"/", nil)
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	resp.Body.Close()
	ctx, cancel := context.WithCancel(t.Context())
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.addr+"/?stall=1", nil)
	done := make(chan error, 1)
	go func() { _, err := f.tr.RoundTrip(req); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("request whose context ended: %v", err)
	}
	if _, _, err := f.do(t, t.Context(), http.MethodGet, ""); err != nil {
		t.Fatal(err)
	}
	if n := f.dials.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (neither abandoned one reused)", n)
	}
}

// An upstream that never ends its headers, or its informational responses, is cut off.
func TestH1ResponseHeaderBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(w io.Writer)
		want error
	}{
		{"headers", func(w io.Writer) {
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\n")
			line := "X-Filler: " + strings.Repeat("z", 1000) + "\r\n"
			for range 2000 {
				if _, err := io.WriteString(w, line); err != nil {
					return
				}
			}
		}, errResponseHeaderTooLarge},
		{"1xx", func(w io.Writer) {
			for range 100 {
				if _, err := io.WriteString(w, "HTTP/1.1 103 Early Hints\r\n\r\n"); err != nil {
					return
				}
			}
		}, errTooMany1xx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err == nil {
					tc.send(c)
				}
			})
			f := newH1Fixture(t, addr)
			if _, _, err := f.do(t, t.Context(), http.MethodGet, ""); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}
