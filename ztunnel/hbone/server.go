package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/netutil"
)

// Errors a Handler returns to choose the answer to a CONNECT it does not accept.
var (
	// ErrDenied: policy denies the tunnel; the client gets 401.
	ErrDenied = errors.New("hbone: denied")
	// ErrUpstreamUnreachable: the target could not be reached; the client gets 503.
	ErrUpstreamUnreachable = errors.New("hbone: upstream unreachable")
	// ErrBadRequest: the request is malformed or its target is not served here; the client gets 400.
	ErrBadRequest = errors.New("hbone: bad request")
)

// Header names HBONE carries (DESIGN.md §3).
const (
	HeaderForwarded   = "Forwarded"
	HeaderBaggage     = "Baggage"
	HeaderTraceparent = "Traceparent"
)

// Handler decides on and serves one tunnel. It authorizes req.Peer for req.Authority, connects
// upstream, then calls req.Accept, which answers 200 and returns the stream. The stream is a
// full-duplex Conn with half-close both ways: CloseWrite sends END_STREAM and the Handler keeps
// reading what the client sends, until its END_STREAM (io.EOF). Returning from ServeHBONE closes
// the stream as Conn.Close does (END_STREAM, then RST_STREAM NO_ERROR if the client is still
// sending). Returning without accepting answers with the status the error maps to: ErrDenied
// 401, ErrBadRequest 400, anything else (ErrUpstreamUnreachable included) 503. ctx ends when the
// stream has ended both ways or was reset, or the connection is gone.
type Handler interface {
	ServeHBONE(ctx context.Context, req *Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) error

// ServeHBONE calls f.
func (f HandlerFunc) ServeHBONE(ctx context.Context, req *Request) error { return f(ctx, req) }

// Request is a CONNECT the server has checked: well-formed, from a peer whose certificate verified.
type Request struct {
	// Authority is the target, from :authority.
	Authority netip.AddrPort
	// Peer is the client's verified identity.
	Peer identity.Identity
	// Forwarded, Baggage and Traceparent are the request headers of those names, verbatim.
	Forwarded, Baggage, Traceparent string
	// Header holds every request header, with canonical names; read-only.
	Header http.Header
	// LocalAddr and RemoteAddr are the addresses of the TCP connection the tunnel arrived on.
	LocalAddr, RemoteAddr net.Addr

	st       *stream
	accepted bool
}

// Accept answers 200 and returns the tunnel. Call it once, after the upstream is connected.
func (r *Request) Accept() (Conn, error) {
	if r.st == nil {
		return nil, errors.New("hbone: request not from a server")
	}
	if r.accepted {
		return nil, errors.New("hbone: Accept called twice")
	}
	r.accepted = true
	if err := r.st.respond(http.StatusOK, false); err != nil {
		return nil, fmt.Errorf("send 200: %w", err)
	}
	return r.st, nil
}

// Server accepts HBONE connections and hands each tunnel to a Handler.
type Server struct {
	cfg     ServerConfig
	tls     *tls.Config
	handler Handler
	log     *slog.Logger
	refused *refusals
	// handshakes holds a token per TLS handshake under way: a peer that opens connections and
	// never finishes them costs at most MaxHandshakes of them, not unbounded memory.
	handshakes chan struct{}
}

// NewServer returns a server; it does not listen. tlsCfg is normally ServerTLSConfig's.
func NewServer(cfg ServerConfig, tlsCfg *tls.Config, h Handler, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server config: %w", err)
	}
	if tlsCfg == nil || h == nil {
		return nil, errors.New("hbone server: nil TLS config or handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "hbone-server")
	return &Server{cfg: cfg, tls: tlsCfg, handler: h, log: log, refused: newRefusals(log),
		handshakes: make(chan struct{}, cfg.MaxHandshakes)}, nil
}

// Serve accepts connections on ln until ctx ends, then closes ln, asks every connection to finish
// (GOAWAY), waits up to DrainTimeout for open tunnels to end and closes what is left. It returns
// nil after a cancellation, once every connection it served is closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var err error
	for {
		var c net.Conn
		if c, err = netutil.Accept(ctx, ln, s.log); err != nil {
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			s.ServeConn(ctx, c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
	if ctx.Err() == nil {
		// The listener was closed under us; end what runs as on shutdown.
		err = fmt.Errorf("accept: %w", err)
	} else {
		err = nil
	}
	// ServeConn sends GOAWAY when ctx ends: clients finish open tunnels and move new ones
	// elsewhere, and each connection closes when its last tunnel ends.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		// Drain time is over: cut the rest. Tunnels fail closed; clients see a reset.
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		<-done
	}
	return err
}

// ServeConn runs the TLS handshake on c and serves HTTP/2 on it until the connection ends. When
// ctx ends it sends GOAWAY and keeps serving open tunnels; a handshake under way finishes first,
// so that the client learns from the GOAWAY that its first request may go elsewhere (a failed
// handshake would only tell it the dial failed). Closing c is what cuts everything. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.refused.note("HBONE connection refused: too many TLS handshakes under way", "remote", c.RemoteAddr(), "limit", s.cfg.MaxHandshakes)
		c.Close()
		return
	}
	raw := newCorkConn(c)
	tc := tls.Server(raw, s.tls)
	defer tc.Close()
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	<-s.handshakes
	if err != nil {
		// A bad or untrusted certificate, a wrong identity, a peer that never finished.
		s.refused.note("HBONE connection refused: TLS handshake failed", "remote", c.RemoteAddr(), "err", err)
		return
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		s.refused.note("HBONE connection refused: the peer did not negotiate h2", "remote", c.RemoteAddr(), "alpn", p)
		return
	}
	// The identity was verified in the handshake (VerifyConnection); this only reads it.
	peer, err := IdentityOf(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		return
	}
	s.serveH2(ctx, tc, raw, connInfo{peer: peer, peerUntil: tc.ConnectionState().PeerCertificates[0].NotAfter,
		local: c.LocalAddr(), remote: c.RemoteAddr()})
}

// serveH2 serves HTTP/2 on an established connection (TLS, or plain in protocol tests) until it
// ends.
func (s *Server) serveH2(ctx context.Context, nc net.Conn, raw *corkConn, ci connInfo) {
	hc := newH2Conn(nc, raw, true, s.cfg.FlowConfig)
	hc.maxStreams = s.cfg.MaxConcurrentStreams
	hc.peerUntil = ci.peerUntil
	hc.parse = func(fields []hpack.HeaderField) (*Request, int) { return parseRequest(fields, ci) }
	// Handlers' contexts do not end with Serve's: on shutdown open tunnels drain (GOAWAY, then
	// DrainTimeout) instead of being cut at once.
	hc.baseCtx = context.WithoutCancel(ctx)
	hc.serve = func(st *stream, req *Request) { go s.serveStream(st, req) }
	if err := hc.start(time.Now().Add(s.cfg.HandshakeTimeout)); err != nil {
		s.log.Debug("http2 preface failed", "remote", ci.remote, "err", err)
		hc.close()
		return
	}
	stop := context.AfterFunc(ctx, hc.shutdown)
	defer stop()
	hc.readLoop()
	// Serve returns only once every Handler has: they end with their streams' contexts.
	hc.handlerWG.Wait()
}

// serveStream runs the Handler for one accepted request and ends its stream.
func (s *Server) serveStream(st *stream, req *Request) {
	err := s.handler.ServeHBONE(st.ctx, req)
	if !req.accepted {
		status := http.StatusServiceUnavailable // unreachable upstream, and anything else
		switch {
		case errors.Is(err, ErrDenied):
			status = http.StatusUnauthorized
		case errors.Is(err, ErrBadRequest):
			status = http.StatusBadRequest
		}
		st.respond(status, true)
	}
	st.Close()
	c := st.c
	c.mu.Lock()
	st.handlerRunning = false
	if st.wireClosed {
		c.handlers--
	}
	c.mu.Unlock()
	st.cancel()
	c.handlerWG.Done()
}

type connInfo struct {
	peer          identity.Identity
	peerUntil     time.Time // the peer certificate's expiry
	local, remote net.Addr
}

// serverHeaders handles a request HEADERS on the reader goroutine.
func (c *h2conn) serverHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		// A second HEADERS (trailers): CONNECT streams carry only DATA (RFC 9113 §8.5).
		c.resetLocked(s, http2.ErrCodeProtocol, resetError{http2.ErrCodeProtocol}, true)
		c.mu.Unlock()
		c.flushCtrlAsync()
		return nil
	}
	if id%2 == 1 && c.recentlyClosedLocked(id) {
		// A closed stream, whose end (maybe our RST_STREAM) the HEADERS crossed: a stream
		// error, the connection and its hpack state are fine (RFC 9113 §5.1).
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: id, val: uint32(http2.ErrCodeStreamClosed)})
		c.mu.Unlock()
		c.flushCtrlAsync()
		return nil
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastPeerID = id
	var refuse http2.ErrCode
	expired := !c.peerUntil.IsZero() && time.Now().After(c.peerUntil)
	switch {
	case c.goAwaySent, c.handlers >= c.maxStreams, expired:
		// Refused streams were not processed: the client retries them elsewhere (an
		// expired peer on a fresh handshake, which checks its certificate again).
		refuse = http2.ErrCodeRefusedStream
	case f.Truncated:
		c.rejectLocked(id, http.StatusRequestHeaderFieldsTooLarge, f.StreamEnded())
	}
	if refuse != 0 || f.Truncated {
		if refuse != 0 {
			c.queueLocked(ctrlFrame{kind: ctrlRST, id: id, val: uint32(refuse)})
		}
		c.mu.Unlock()
		c.flushCtrlAsync()
		if expired {
			go c.shutdown()
		}
		return nil
	}
	c.mu.Unlock()

	req, status := c.parse(f.Fields)

	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil
	}
	if status != http.StatusOK {
		c.rejectLocked(id, status, f.StreamEnded())
		c.mu.Unlock()
		c.flushCtrlAsync()
		return nil
	}
	st := c.newStreamLocked(id)
	st.ctx, st.cancel = context.WithCancel(c.baseCtx)
	st.recvDone = f.StreamEnded()
	st.handlerRunning = true
	c.handlers++
	// Under mu and while the connection runs, so before serveH2's Wait, which follows c.err.
	c.handlerWG.Add(1)
	req.st = st
	c.mu.Unlock()
	c.serve(st, req)
	return nil
}

// rejectLocked answers a request the Handler never sees.
func (c *h2conn) rejectLocked(id uint32, status int, ended bool) {
	c.queueLocked(ctrlFrame{kind: ctrlStatus, id: id, val: uint32(status)})
	if !ended {
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: id, val: uint32(http2.ErrCodeNo)})
	}
}

func statusField(status int) hpack.HeaderField {
	return hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)}
}

// parseRequest validates a request's header fields and builds the Request a Handler sees, or
// returns the status to answer.
func parseRequest(fields []hpack.HeaderField, ci connInfo) (*Request, int) {
	var method, authority string
	var extra bool // :scheme, :path or :protocol, which a CONNECT must not carry (RFC 9113 §8.5)
	header := make(http.Header, len(fields))
	for _, f := range fields {
		if f.IsPseudo() {
			switch f.Name {
			case ":method":
				method = f.Value
			case ":authority":
				authority = f.Value
			default:
				extra = true
			}
			continue
		}
		// Connection-specific fields make a request malformed (RFC 9113 §8.2.2).
		switch f.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, http.StatusBadRequest
		case "te":
			if f.Value != "trailers" {
				return nil, http.StatusBadRequest
			}
		}
		k := http.CanonicalHeaderKey(f.Name)
		header[k] = append(header[k], f.Value)
	}
	if method != http.MethodConnect || extra {
		return nil, http.StatusBadRequest
	}
	ap, err := netip.ParseAddrPort(authority)
	if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().Zone() != "" {
		return nil, http.StatusBadRequest
	}
	if ci.peer.IsZero() {
		// Not reachable through ServeConn, which requires a verified client certificate.
		return nil, http.StatusUnauthorized
	}
	return &Request{
		Authority:   ap,
		Peer:        ci.peer,
		Forwarded:   header.Get(HeaderForwarded),
		Baggage:     header.Get(HeaderBaggage),
		Traceparent: header.Get(HeaderTraceparent),
		Header:      header,
		LocalAddr:   ci.local,
		RemoteAddr:  ci.remote,
	}, http.StatusOK
}
