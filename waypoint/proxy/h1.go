package proxy

// h1Transport: the HTTP/1.1 client of upstream requests.
//
// net/http.Transport gives each connection two goroutines of its own, one writing requests and
// one reading responses, and hands every request and response between them and the caller over
// channels: four goroutine wake-ups per request, which at a thousand requests a second cost the
// waypoint more than its routing. Here the caller's goroutine writes the request and reads the
// response itself (over HBONE, hbone's streams then read the socket in that same goroutine).
//
// Rules kept here:
//   - A request body of known length up to maxInlineBody is read before the request is written,
//     and the request goes out in one write. A larger or streamed body is written by a goroutine
//     of its own while the response is read, as a server may answer before it has read it all.
//   - A connection goes back to its endpoint's pool only when its response body was read to its
//     end, its request body was written to its end (a writer still finishing when the response
//     ends is waited for, up to writerGrace), and neither side asked to close; anything else
//     closes it. A pooled connection holds no buffer.
//   - A request that fails on a pooled connection before any byte of its response arrived (the
//     server closed it while idle) is sent once more on a new connection, when its body can be
//     sent again (none, or read before the first attempt).
//   - maxConns, when set, bounds the connections open to each endpoint (idle ones included);
//     requests beyond it wait for one to come back or close.
//   - A response's headers are bounded (maxResponseHeaderBytes, max1xxResponses), its body not.
//   - 1xx responses other than 101 are passed to the request's httptrace (ReverseProxy forwards
//     them to the client) and skipped; a 101 response's body is the connection itself.
//   - The context of a request ends it: the connection is closed under it.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"sync"
	"time"

	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// maxInlineBody bounds the request body of known length read before the request is written,
// so that headers and body go out in one write (over HBONE, one frame, TLS record and system
// call).
const maxInlineBody = 16 << 10

// errUnreplayable: a pooled connection failed under a request whose body cannot be sent again.
var errUnreplayable = errors.New("connection closed before the response, and the request body cannot be sent again")

type h1Transport struct {
	dial        func(ctx context.Context, addr string) (net.Conn, error)
	maxConns    int // per endpoint, 0 for no bound
	maxIdle     int // idle connections kept per endpoint
	idleTimeout time.Duration

	mu     sync.Mutex
	hosts  map[string]*h1Host
	closed bool
}

// h1Host is one endpoint's connections.
type h1Host struct {
	idle    []*h1Conn      // most recently used last
	open    int            // connections open or being dialled, idle ones included
	waiters []chan *h1Conn // requests waiting for a connection (maxConns): a pooled one, or nil to dial
}

type h1Conn struct {
	nc    net.Conn
	addr  string
	timer *time.Timer // closes the connection when idle too long
	lim   limitedReader
}

// Bounds on what an upstream answers before a response's body: its header bytes (as net/http's
// server bounds a request's) and its informational responses.
const (
	maxResponseHeaderBytes = 1 << 20
	max1xxResponses        = 10
)

var (
	errResponseHeaderTooLarge = errors.New("upstream response headers too large")
	errTooMany1xx             = errors.New("too many informational (1xx) responses")
)

// limitedReader reads from r, failing once n bytes were read; n < 0 for no bound.
type limitedReader struct {
	r io.Reader
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n == 0 {
		return 0, errResponseHeaderTooLarge
	}
	if l.n > 0 && len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	if l.n > 0 {
		l.n -= n
	}
	return n, err
}

func newH1Transport(dial func(ctx context.Context, addr string) (net.Conn, error)) *h1Transport {
	return &h1Transport{dial: dial, maxIdle: 64, idleTimeout: 90 * time.Second, hosts: map[string]*h1Host{}}
}

// clone is a transport of its own with the same dialer, bounded to maxConns per endpoint.
func (t *h1Transport) clone(maxConns int) *h1Transport {
	c := newH1Transport(t.dial)
	c.maxIdle, c.idleTimeout, c.maxConns = t.maxIdle, t.idleTimeout, maxConns
	return c
}

var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, maxInlineBody+4<<10) }}
)

// RoundTrip sends req to the endpoint in req.URL.Host.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The body: in hand (sent in the same write as the headers, and again on a new connection
	// if need be), or streamed.
	var inline []byte
	stream := req.Body != nil && req.Body != http.NoBody
	if stream && req.ContentLength > 0 && req.ContentLength <= maxInlineBody {
		b := make([]byte, req.ContentLength)
		_, err := io.ReadFull(req.Body, b)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the request body: %w", err)
		}
		inline, stream = b, false
	}
	for {
		c, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			if stream {
				req.Body.Close()
			}
			return nil, err
		}
		resp, err := t.exchange(ctx, c, req, inline, stream)
		if err == nil {
			return resp, nil
		}
		var nothing errNothingRead
		if !errors.As(err, &nothing) {
			return nil, err
		}
		// A pooled connection the server had closed: once more on a new one, if the request can
		// be sent again, and either it did not reach the server or it may be sent twice.
		if !reused || ctx.Err() != nil || (nothing.sent && !idempotent(req)) {
			return nil, nothing.err
		}
		if stream {
			return nil, fmt.Errorf("%w: %w", errUnreplayable, nothing.err)
		}
	}
}

// idempotent reports whether req may be sent twice (RFC 9110 §9.2.2, and the Idempotency-Key
// headers net/http honours too).
func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

// errNothingRead: the exchange failed before any byte of the response arrived; sent is false
// when the request was not written either.
type errNothingRead struct {
	err  error
	sent bool
}

func (e errNothingRead) Error() string { return e.err.Error() }
func (e errNothingRead) Unwrap() error { return e.err }

// exchange writes req on c and reads its response. On an error c is closed; errNothingRead
// wraps one that came before any byte of the response.
func (t *h1Transport) exchange(ctx context.Context, c *h1Conn, req *http.Request, inline []byte, stream bool) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { c.nc.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		t.discard(c)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	out := *req // shallow: only the body changes
	if inline != nil {
		out.Body = io.NopCloser(bytes.NewReader(inline))
	}
	write := func() error {
		bw := h1Writers.Get().(*bufio.Writer)
		bw.Reset(c.nc)
		err := out.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		bw.Reset(nil)
		h1Writers.Put(bw)
		return err
	}
	var written chan error
	if stream {
		written = make(chan error, 1)
		go func() {
			err := write()
			if err != nil {
				c.nc.Close() // the response cannot be trusted to come: end the exchange
			}
			written <- err
		}()
	} else if err := write(); err != nil {
		return fail(errNothingRead{err: err})
	}

	br := h1Readers.Get().(*bufio.Reader)
	c.lim = limitedReader{r: c.nc, n: maxResponseHeaderBytes}
	br.Reset(&c.lim)
	putReader := func() {
		br.Reset(nil)
		h1Readers.Put(br)
	}
	trace := httptrace.ContextClientTrace(ctx)
	var resp *http.Response
	for n1xx := 0; ; n1xx++ {
		if n1xx > max1xxResponses {
			putReader()
			return fail(errTooMany1xx)
		}
		if _, err := br.Peek(1); err != nil {
			putReader()
			if resp == nil {
				err = errNothingRead{err: err, sent: true}
			}
			return fail(err)
		}
		var err error
		if resp, err = http.ReadResponse(br, req); err != nil {
			putReader()
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				putReader()
				return fail(err)
			}
		}
	}
	c.lim.n = -1 // the body is unbounded
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection is the caller's now (ReverseProxy copies both ways); what was read past
		// the response's headers comes first.
		stop()
		rest := make([]byte, br.Buffered())
		_, _ = io.ReadFull(br, rest)
		putReader()
		t.release(c.addr) // no longer this transport's to count or pool
		resp.Body = &upgraded{Conn: c.nc, rest: rest}
		return resp, nil
	}
	b := &h1Body{t: t, c: c, br: br, body: resp.Body, stop: stop, written: written,
		keep: !resp.Close && !req.Close}
	if resp.Body == http.NoBody { // none to read (HEAD, 204, 304, a length of 0): done now
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// h1Body is a response body: read to its end, it gives its connection back to the pool.
type h1Body struct {
	t       *h1Transport
	c       *h1Conn
	br      *bufio.Reader
	body    io.ReadCloser
	stop    func() bool // stops closing the connection at the context's end
	written chan error  // the streamed request body's end, nil for none
	keep    bool
	done    bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

// finish ends the exchange: the connection goes back to the pool when complete is true and
// nothing else stands in the way, and is closed otherwise.
func (b *h1Body) finish(complete bool) {
	b.done = true
	stopped := b.stop() // false: the context ended, and the connection with it
	reuse := complete && b.keep && stopped && b.br.Buffered() == 0
	late := false
	if b.written != nil {
		select {
		case err := <-b.written:
			reuse = reuse && err == nil
		default:
			late = reuse
		}
	}
	b.br.Reset(nil)
	h1Readers.Put(b.br)
	switch {
	case late:
		// The response ended before the request body's writer reported: it may be a write
		// from done (the server read it all and answered), or stuck on a server that answered
		// before reading it. The connection waits for it, off the request's way.
		go b.t.putWhenWritten(b.c, b.written)
	case reuse:
		b.t.put(b.c)
	default:
		b.t.discard(b.c)
	}
}

// writerGrace is how long a connection whose response ended waits for its request body's writer.
const writerGrace = time.Second

// putWhenWritten pools c once its request body's writer has finished without an error, and
// closes it if the writer fails or is not done within writerGrace (which ends the writer).
func (t *h1Transport) putWhenWritten(c *h1Conn, written <-chan error) {
	timer := time.NewTimer(writerGrace)
	defer timer.Stop()
	select {
	case err := <-written:
		if err == nil {
			t.put(c)
			return
		}
	case <-timer.C:
	}
	t.discard(c)
}

// upgraded is a switched-protocols connection (WebSocket): the bytes read past the response's
// headers, then the connection.
type upgraded struct {
	net.Conn
	rest []byte
}

func (u *upgraded) Read(p []byte) (int, error) {
	if len(u.rest) > 0 {
		n := copy(p, u.rest)
		u.rest = u.rest[n:]
		return n, nil
	}
	return u.Conn.Read(p)
}

// get returns a pooled connection to addr (reused) or a new one.
func (t *h1Transport) get(ctx context.Context, addr string) (c *h1Conn, reused bool, err error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, false, net.ErrClosed
	}
	h := t.hostLocked(addr)
	for n := len(h.idle); n > 0; n = len(h.idle) {
		c = h.idle[n-1]
		h.idle = h.idle[:n-1]
		c.timer.Stop() // if it fired, it finds c gone from the pool and leaves it alone
		t.mu.Unlock()
		if !hbone.Stale(c.nc) {
			return c, true, nil
		}
		t.discard(c) // its server closed it while it was idle
		t.mu.Lock()
		h = t.hostLocked(addr) // discard may have dropped it
	}
	if t.maxConns > 0 && h.open >= t.maxConns {
		ch := make(chan *h1Conn, 1)
		h.waiters = append(h.waiters, ch)
		t.mu.Unlock()
		select {
		case c = <-ch:
		case <-ctx.Done():
			t.mu.Lock()
			h.waiters = slices.DeleteFunc(h.waiters, func(w chan *h1Conn) bool { return w == ch })
			t.mu.Unlock()
			select {
			case c := <-ch: // given at the last moment: pass it on
				if c != nil {
					t.put(c)
				} else {
					t.release(addr)
				}
			default:
			}
			return nil, false, ctx.Err()
		}
		if c != nil {
			return c, true, nil
		}
		// nil: a connection closed, and its place is this request's to dial
	} else {
		h.open++
		t.mu.Unlock()
	}
	nc, err := t.dial(ctx, addr)
	if err != nil {
		t.release(addr)
		return nil, false, err
	}
	return &h1Conn{nc: nc, addr: addr}, false, nil
}

// hostLocked returns addr's connections, made when there are none. Called with mu held.
func (t *h1Transport) hostLocked(addr string) *h1Host {
	h := t.hosts[addr]
	if h == nil {
		h = &h1Host{}
		t.hosts[addr] = h
	}
	return h
}

// put gives c back: to a waiting request, or to the pool.
func (t *h1Transport) put(c *h1Conn) {
	t.mu.Lock()
	h := t.hosts[c.addr]
	if len(h.waiters) > 0 {
		ch := h.waiters[0]
		h.waiters = h.waiters[1:]
		t.mu.Unlock()
		ch <- c
		return
	}
	if t.closed || len(h.idle) >= t.maxIdle {
		t.mu.Unlock()
		t.discard(c)
		return
	}
	if c.timer == nil {
		c.timer = time.AfterFunc(t.idleTimeout, func() { t.expire(c) })
	} else {
		c.timer.Reset(t.idleTimeout)
	}
	h.idle = append(h.idle, c)
	t.mu.Unlock()
}

// expire closes c if it is still idle.
func (t *h1Transport) expire(c *h1Conn) {
	t.mu.Lock()
	h := t.hosts[c.addr]
	i := -1
	if h != nil {
		i = slices.Index(h.idle, c)
	}
	if i < 0 {
		t.mu.Unlock()
		return
	}
	h.idle = slices.Delete(h.idle, i, i+1)
	t.mu.Unlock()
	t.discard(c)
}

// discard closes c and gives up its place.
func (t *h1Transport) discard(c *h1Conn) {
	c.nc.Close()
	t.release(c.addr)
}

// release gives up a connection's place at addr: to a request waiting to dial, or for good.
func (t *h1Transport) release(addr string) {
	t.mu.Lock()
	h := t.hosts[addr]
	if len(h.waiters) > 0 {
		ch := h.waiters[0]
		h.waiters = h.waiters[1:]
		t.mu.Unlock()
		ch <- nil // the place passes to it: open stays as it is
		return
	}
	h.open--
	if h.open == 0 && len(h.idle) == 0 {
		delete(t.hosts, addr)
	}
	t.mu.Unlock()
}

// CloseIdleConnections closes the pooled connections.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	var idle []*h1Conn
	for _, h := range t.hosts {
		idle = append(idle, h.idle...)
		h.idle = nil
	}
	t.mu.Unlock()
	for _, c := range idle {
		c.timer.Stop()
		t.discard(c)
	}
}

// close closes the pooled connections and refuses new requests.
func (t *h1Transport) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.CloseIdleConnections()
}
