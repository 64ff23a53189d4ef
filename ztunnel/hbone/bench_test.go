package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// Benchmarks compare the tunnel with plain TLS 1.3 over the same loopback, in the same run. Run
// them together: go test -run '^$' -bench . -benchmem ./ztunnel/hbone/

const benchChunk = 32 << 10

// plainTLSPair returns both ends of a TLS 1.3 connection over loopback, with the same certificates
// and ALPN as the tunnel.
func plainTLSPair(b *testing.B) (client, server *tls.Conn) {
	b.Helper()
	c, _ := cas(b)
	sCfg, err := ServerTLSConfig(staticCreds(c.leaf(b, idServer), c.pool))
	if err != nil {
		b.Fatal(err)
	}
	cCfg, err := ClientTLSConfig(staticCreds(c.leaf(b, idClient), c.pool), idServer)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		s := tls.Server(raw, sCfg)
		s.Handshake()
		accepted <- s
	}()
	client, err = tls.Dial("tcp", ln.Addr().String(), cCfg)
	if err != nil {
		b.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// tunnelPair returns a tunnel and the server's end of it.
func tunnelPair(b *testing.B) (client, server Conn) {
	b.Helper()
	ends := make(chan Conn, 1)
	done := make(chan struct{})
	srv := startServer(b, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		ends <- c
		<-done
		return nil
	}))
	cl := newTestClient(b, DefaultClientConfig(), nil)
	client = mustDial(b, cl, target(srv))
	server = <-ends
	b.Cleanup(func() { client.Close(); close(done) })
	return client, server
}

// drain reads src until it ends and reports the byte count.
func drain(src io.Reader) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		n, _ := Copy(io.Discard, src)
		out <- n
	}()
	return out
}

type closeWriter interface {
	io.Writer
	CloseWrite() error
}

func benchThroughput(b *testing.B, w closeWriter, r io.Reader) {
	got := drain(r)
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	w.CloseWrite()
	if n := <-got; n != int64(b.N)*benchChunk {
		b.Fatalf("received %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
}

// BenchmarkThroughput: one stream, client to server, 32 KiB writes. allocs/op is allocations per
// relayed 32 KiB buffer across both ends.
func BenchmarkThroughput(b *testing.B) {
	b.Run("tunnel", func(b *testing.B) {
		c, s := tunnelPair(b)
		benchThroughput(b, c, s)
	})
	b.Run("tls", func(b *testing.B) {
		c, s := plainTLSPair(b)
		benchThroughput(b, c, s)
	})
}

// echo answers every 1 KiB message read from s with the same bytes, until s ends.
func echo(s io.ReadWriter) {
	go func() {
		buf := make([]byte, 1<<10)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
}

// roundTrips makes n 1 KiB request/response round trips on c.
func roundTrips(c io.ReadWriter, req, resp []byte, n int) error {
	for range n {
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return err
		}
	}
	return nil
}

func benchLatency(b *testing.B, c, s io.ReadWriter) {
	echo(s)
	req, resp := make([]byte, 1<<10), make([]byte, 1<<10)
	b.ReportAllocs()
	b.ResetTimer()
	if err := roundTrips(c, req, resp, b.N); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLatencyRatio1KiB compares the 1 KiB round trip of a tunnel with plain TLS robustly on a
// busy machine: batches of 200 round trips on each alternate, so that load that comes and goes
// weighs on both alike. It reports both per-round-trip times and tunnel/TLS (target: <= 1.15);
// ns/op is the time of one pair.
func BenchmarkLatencyRatio1KiB(b *testing.B) {
	tc, ts := tunnelPair(b)
	pc, ps := plainTLSPair(b)
	echo(ts)
	echo(ps)
	req, resp := make([]byte, 1<<10), make([]byte, 1<<10)
	var tunnel, plain time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += 200 {
		n := min(200, b.N-done)
		start := time.Now()
		if err := roundTrips(tc, req, resp, n); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := roundTrips(pc, req, resp, n); err != nil {
			b.Fatal(err)
		}
		tunnel += mid.Sub(start)
		plain += time.Since(mid)
	}
	b.ReportMetric(float64(tunnel.Nanoseconds())/float64(b.N), "tunnel-ns/rt")
	b.ReportMetric(float64(plain.Nanoseconds())/float64(b.N), "tls-ns/rt")
	b.ReportMetric(float64(tunnel)/float64(plain), "tunnel/tls")
}

// BenchmarkLatency1KiB: 1 KiB request, 1 KiB response, on an open tunnel or TLS connection.
func BenchmarkLatency1KiB(b *testing.B) {
	b.Run("tunnel", func(b *testing.B) {
		c, s := tunnelPair(b)
		benchLatency(b, c, s)
	})
	b.Run("tls", func(b *testing.B) {
		c, s := plainTLSPair(b)
		benchLatency(b, c, s)
	})
}

// BenchmarkTunnelSetup: open and close a tunnel on a warm pooled connection.
func BenchmarkTunnelSetup(b *testing.B) {
	srv := startServer(b, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		_, err = Copy(io.Discard, c)
		return err
	}))
	cl := newTestClient(b, DefaultClientConfig(), nil)
	mustDial(b, cl, target(srv)).Close() // warm
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		c, err := cl.Dial(ctx, target(srv))
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tunnels/s")
}

// BenchmarkCopy: the relay copy loop alone, per 32 KiB buffer; steady state must not allocate.
func BenchmarkCopy(b *testing.B) {
	src := &repeatReader{chunk: make([]byte, benchChunk)}
	Copy(io.Discard, &limitReader{r: src, n: 1}) // warm the pool
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	src.left = b.N
	if _, err := Copy(io.Discard, src); err != nil {
		b.Fatal(err)
	}
}

type repeatReader struct {
	chunk []byte
	left  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	r.left--
	return copy(p, r.chunk), nil
}

type limitReader struct {
	r *repeatReader
	n int
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n == 0 {
		return 0, io.EOF
	}
	l.n--
	return copy(p, l.r.chunk), nil
}

// BenchmarkIdleTunnelMemory: heap and stacks held per open, idle tunnel, client and server ends
// together, after the pooled connections exist. Reported as B/tunnel.
func BenchmarkIdleTunnelMemory(b *testing.B) {
	const tunnels = 200
	srv := startServer(b, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		c.Read(make([]byte, 1)) // idle until the client closes
		return nil
	}))
	cl := newTestClient(b, DefaultClientConfig(), nil)
	// Warm: the pooled connections (two, at 100 streams each) and x/net's pools exist before measuring.
	var warm []Conn
	for range tunnels {
		warm = append(warm, mustDial(b, cl, target(srv)))
	}
	for _, c := range warm {
		c.Close()
	}
	testutil.Eventually(b, 10*time.Second, "the warm-up goroutines to exit", func() bool { return runtime.NumGoroutine() < 40 })
	var perTunnel float64
	for range b.N {
		before := memInUse()
		conns := make([]Conn, 0, tunnels)
		for range tunnels {
			conns = append(conns, mustDial(b, cl, target(srv)))
		}
		after := memInUse()
		perTunnel = float64(after-before) / tunnels
		for _, c := range conns {
			c.Close()
		}
	}
	b.ReportMetric(perTunnel, "B/tunnel")
}

func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
