package images

// The benchmark load generator (`client bench`). Rules it keeps:
//   - Open loop: in rate mode requests are due on a fixed schedule whatever the server does. A
//     request that a busy pool picks up late is timed from when it was due, so waiting counts
//     (no coordinated omission); one picked up early is timed from when its worker woke for it,
//     so the generator's own timer delay, which exists only while the system keeps up, does not.
//   - Latencies go into an HDR histogram (1 µs to 60 s, 3 significant digits); results carry a fixed
//     set of quantiles so that runs can be compared and plotted without shipping histograms.
//   - The same code path serves every scenario: plain TCP or TLS 1.3 (mutual when a client
//     certificate is given), persistent connections or a new one per request, and HTTP/1.1
//     POSTs of the same size for L7 scenarios.

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ambient-mesh/ambient/internal/netutil"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// Load modes.
const (
	ModeRate     = "rate"     // open loop at Rate requests per second
	ModeMax      = "max"      // closed loop: Conns connections as fast as each is answered
	ModeStream   = "stream"   // one connection reading from a source server: bytes per second
	ModeConnRate = "connrate" // closed loop: Conns workers each opening, using and closing connections
)

// Quantiles are the points every latency result reports (100 is the maximum).
var Quantiles = []float64{50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100}

// LoadConfig describes one load run.
type LoadConfig struct {
	Mode string
	Addr string
	// Rate is the offered requests per second (rate mode).
	Rate int
	// Conns is the number of persistent connections (rate, max) or concurrent workers
	// (connrate, and rate with NewConn).
	Conns int
	// Size is the bytes of each request, which the echo server sends back.
	Size int
	// NewConn opens a new connection for every request (rate mode).
	NewConn  bool
	Duration time.Duration
	Timeout  time.Duration
	// TLS, when set, wraps every connection (TLS 1.3).
	TLS *tls.Config
	// HTTP makes each request an HTTP/1.1 POST of Size bytes to the echo server's /echo (which
	// answers with the same bytes) on kept-alive connections, with Host as its Host header.
	HTTP bool
	Host string
}

// LoadResult is what a run measured. Latencies are in nanoseconds, one per Quantiles entry.
type LoadResult struct {
	Mode       string `json:"mode"`
	Requests   int64  `json:"requests"`
	Errors     int64  `json:"errors"`
	FirstError string `json:"firstError,omitempty"`
	// ErrorKinds counts the failures by what failed and why ("dial: i/o timeout").
	ErrorKinds map[string]int64 `json:"errorKinds,omitempty"`
	ElapsedNS  int64            `json:"elapsedNs"`
	Offered    float64          `json:"offered,omitempty"`
	Achieved   float64          `json:"achieved"`
	// BytesPerSecond is the stream mode's throughput.
	BytesPerSecond float64 `json:"bytesPerSecond,omitempty"`
	Latency        []int64 `json:"latencyNs,omitempty"`
}

// Percentile returns the latency at quantile q (one of Quantiles), in nanoseconds.
func (r LoadResult) Percentile(q float64) int64 {
	for i, x := range Quantiles {
		if x == q && i < len(r.Latency) {
			return r.Latency[i]
		}
	}
	return 0
}

// RunLoad runs one load and returns what it measured. A run whose every request failed is an
// error; some failures are counted in the result.
func RunLoad(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Duration <= 0 {
		return LoadResult{}, errors.New("load: duration must be positive")
	}
	if cfg.Mode != ModeStream && (cfg.Conns <= 0 || cfg.Size <= 0) {
		return LoadResult{}, errors.New("load: conns and size must be positive")
	}
	g := &generator{cfg: cfg}
	var res LoadResult
	var err error
	switch cfg.Mode {
	case ModeRate:
		if cfg.Rate <= 0 {
			return LoadResult{}, errors.New("load: rate must be positive")
		}
		res, err = g.rate(ctx)
	case ModeMax:
		res, err = g.closed(ctx, false)
	case ModeConnRate:
		res, err = g.closed(ctx, true)
	case ModeStream:
		res, err = g.stream(ctx)
	default:
		return LoadResult{}, fmt.Errorf("load: unknown mode %q", cfg.Mode)
	}
	res.Mode = cfg.Mode
	if err == nil && res.Requests == 0 && res.BytesPerSecond == 0 {
		err = fmt.Errorf("load: nothing succeeded: %s", res.FirstError)
	}
	return res, err
}

type generator struct {
	cfg   LoadConfig
	mu    sync.Mutex
	hist  *hdrhistogram.Histogram
	errs  int64
	first string
	kinds map[string]int64
}

func newHistogram() *hdrhistogram.Histogram { return hdrhistogram.New(1_000, 60_000_000_000, 3) }

func (g *generator) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.errs++
	if g.first == "" {
		g.first = err.Error()
	}
	if g.kinds == nil {
		g.kinds = map[string]int64{}
	}
	g.kinds[errorKind(err)]++
}

// errorKind names a failure without its addresses, so that failures group: "dial: connection
// refused", "read: i/o timeout".
func errorKind(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op + ": " + msg
	}
	return msg
}

func (g *generator) merge(h *hdrhistogram.Histogram) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hist == nil {
		g.hist = newHistogram()
	}
	g.hist.Merge(h)
}

func (g *generator) result(elapsed time.Duration) LoadResult {
	r := LoadResult{ElapsedNS: int64(elapsed), Errors: g.errs, FirstError: g.first, ErrorKinds: g.kinds}
	if g.hist != nil {
		r.Requests = g.hist.TotalCount()
		for _, q := range Quantiles {
			if q == 100 {
				r.Latency = append(r.Latency, g.hist.Max())
			} else {
				r.Latency = append(r.Latency, g.hist.ValueAtQuantile(q))
			}
		}
	}
	r.Achieved = float64(r.Requests) / elapsed.Seconds()
	return r
}

// dial opens one connection (and completes the TLS handshake).
func (g *generator) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: g.cfg.Timeout}
	c, err := d.DialContext(ctx, "tcp", g.cfg.Addr)
	if err != nil {
		return nil, err
	}
	if g.cfg.TLS == nil {
		if g.cfg.HTTP {
			return &httpConn{Conn: c, br: bufio.NewReader(c), host: cmp.Or(g.cfg.Host, g.cfg.Addr)}, nil
		}
		return c, nil
	}
	tc := tls.Client(c, g.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// exchange sends one request and reads the echo.
func (g *generator) exchange(c net.Conn, req, resp []byte) error {
	_ = c.SetDeadline(time.Now().Add(g.cfg.Timeout))
	if hc, ok := c.(*httpConn); ok {
		return hc.post(req, resp)
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, resp)
	return err
}

// httpConn is a kept-alive HTTP/1.1 connection to the echo server.
type httpConn struct {
	net.Conn
	br   *bufio.Reader
	host string
}

// post sends req as the body of a POST to /echo and reads the answer's body into resp.
func (c *httpConn) post(req, resp []byte) error {
	head := "POST /echo HTTP/1.1\r\nHost: " + c.host + "\r\nContent-Length: " + strconv.Itoa(len(req)) + "\r\n\r\n"
	if _, err := c.Write(append([]byte(head), req...)); err != nil {
		return err
	}
	r, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", r.StatusCode)
	}
	if _, err := io.ReadFull(r.Body, resp); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, r.Body)
	return err
}

// once opens a connection, exchanges one request and closes it.
func (g *generator) once(ctx context.Context, req, resp []byte) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return g.exchange(c, req, resp)
}

// dialPersistent opens the Conns persistent connections of a run, none when each request has its
// own connection.
func (g *generator) dialPersistent(ctx context.Context, newConn bool) ([]net.Conn, error) {
	if newConn {
		return nil, nil
	}
	var conns []net.Conn
	for i := range g.cfg.Conns {
		c, err := g.dial(ctx)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// request makes worker w's next request: on its persistent connection, or on a new one when
// there are none.
func (g *generator) request(ctx context.Context, conns []net.Conn, w int, req, resp []byte) error {
	if conns == nil {
		return g.once(ctx, req, resp)
	}
	return g.exchange(conns[w], req, resp)
}

// rate is the open loop: request k is due at start + k/Rate; a pool of Conns workers takes them
// in order.
func (g *generator) rate(ctx context.Context) (LoadResult, error) {
	conns, err := g.dialPersistent(ctx, g.cfg.NewConn)
	if err != nil {
		return LoadResult{}, err
	}
	defer closeAll(conns)
	interval := time.Second / time.Duration(g.cfg.Rate)
	total := int64(g.cfg.Duration / interval)
	start := time.Now().Add(5 * time.Millisecond)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range g.cfg.Conns {
		wg.Go(func() {
			h := newHistogram()
			defer g.merge(h)
			req, resp := make([]byte, g.cfg.Size), make([]byte, g.cfg.Size)
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				if k >= total {
					return
				}
				due := start.Add(time.Duration(k) * interval)
				from := time.Now()
				if from.Before(due) {
					time.Sleep(time.Until(due))
					from = time.Now() // keeping up: the timer's wake-up delay is not the server's
				} else {
					from = due // behind: the wait since due counts
				}
				if err := g.request(ctx, conns, w, req, resp); err != nil {
					g.fail(err)
					if !g.cfg.NewConn {
						return // a broken connection takes no more requests
					}
					continue
				}
				_ = h.RecordValue(int64(time.Since(from)))
			}
		})
	}
	wg.Wait()
	r := g.result(time.Since(start))
	r.Offered = float64(g.cfg.Rate)
	return r, nil
}

// closed runs Conns workers for Duration, each sending its next request as soon as the last is
// answered, on one persistent connection (max) or a new connection each time (connrate).
func (g *generator) closed(ctx context.Context, newConn bool) (LoadResult, error) {
	conns, err := g.dialPersistent(ctx, newConn)
	if err != nil {
		return LoadResult{}, err
	}
	defer closeAll(conns)
	// The run ends at a fixed time, checked by the clock: a context deadline alone would let a
	// dial fail at once on its expired deadline before the context reports done, and count.
	start := time.Now()
	end := start.Add(g.cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var wg sync.WaitGroup
	for w := range g.cfg.Conns {
		wg.Go(func() {
			h := newHistogram()
			defer g.merge(h)
			req, resp := make([]byte, g.cfg.Size), make([]byte, g.cfg.Size)
			for time.Now().Before(end) {
				t := time.Now()
				if err := g.request(ctx, conns, w, req, resp); err != nil {
					if !time.Now().Before(end) {
						return // the run ended mid-request
					}
					g.fail(err)
					if !newConn {
						return
					}
					continue
				}
				_ = h.RecordValue(int64(time.Since(t)))
			}
		})
	}
	wg.Wait()
	return g.result(time.Since(start)), nil
}

// stream reads from a source server for Duration on one connection.
func (g *generator) stream(ctx context.Context) (LoadResult, error) {
	c, err := g.dial(ctx)
	if err != nil {
		return LoadResult{}, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	// The first bytes can sit in buffers along the way: time from when data is flowing.
	_ = c.SetReadDeadline(time.Now().Add(g.cfg.Timeout))
	if _, err := io.ReadFull(c, buf); err != nil {
		return LoadResult{}, fmt.Errorf("stream start: %w", err)
	}
	start := time.Now()
	end := start.Add(g.cfg.Duration)
	var n int64
	for time.Now().Before(end) {
		_ = c.SetReadDeadline(time.Now().Add(g.cfg.Timeout))
		k, err := c.Read(buf)
		n += int64(k)
		if err != nil {
			return LoadResult{}, fmt.Errorf("stream after %d bytes: %w", n, err)
		}
	}
	elapsed := time.Since(start)
	return LoadResult{ElapsedNS: int64(elapsed), BytesPerSecond: float64(n) / elapsed.Seconds()}, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// serveSource writes zeros to every connection until it closes: the far end of stream mode.
func serveSource(l net.Listener) error {
	return acceptLoop(l, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}

func serveTCPEcho(l net.Listener) error {
	return acceptLoop(l, echoConn)
}

// echoConn writes back what it reads with hbone.Copy, which holds no buffer while the
// connection idles. io.Copy(c, c) would splice, holding a pipe (two descriptors) per idle
// connection: a third of the descriptors for the idle-connection benchmark's 10,000 connections.
func echoConn(c net.Conn) { _, _ = hbone.Copy(c, c) }

// serveGreeting speaks first: "hello from <pod>\n" (POD_NAME, or "echo"), then echoes.
func serveGreeting(l net.Listener) error {
	name := cmp.Or(os.Getenv("POD_NAME"), "echo")
	return acceptLoop(l, func(c net.Conn) {
		if _, err := io.WriteString(c, "hello from "+name+"\n"); err == nil {
			echoConn(c)
		}
	})
}

// acceptLoop serves each connection in its own goroutine until the listener closes.
func acceptLoop(l net.Listener, serve func(net.Conn)) error {
	for {
		c, err := netutil.Accept(context.Background(), l, slog.Default())
		if err != nil {
			return nil // closed
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

// HoldIdle opens n connections to addr (with tlsCfg when set), 128 at a time, proves each carries
// a byte both ways, calls ready, and keeps them open until ctx ends.
func HoldIdle(ctx context.Context, addr string, n int, timeout time.Duration, tlsCfg *tls.Config, ready func()) error {
	g := &generator{cfg: LoadConfig{Addr: addr, Timeout: timeout, TLS: tlsCfg}}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range min(n, 128) {
		wg.Go(func() {
			b := []byte{'x'}
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := g.dial(ctx)
				if err == nil {
					conns[i] = c
					err = g.exchange(c, b, b)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("connection %d of %d: %w", i+1, n, err)
					}
					mu.Unlock()
					next.Store(int64(n)) // stop the others
					return
				}
				_ = c.SetDeadline(time.Time{})
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	ready()
	<-ctx.Done()
	return nil
}
