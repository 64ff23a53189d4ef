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
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-mesh/ambient/api/identity"
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
// upstream, then calls req.Accept, which answers 200 and returns the stream. The stream ends (END_STREAM to
// the client) when the Handler returns or closes the stream's write side, whichever comes first;
// after that, reads fail and data the client still sends is refused (RST_STREAM NO_ERROR). Returning without accepting answers with the status the error
// maps to: ErrDenied 401, ErrBadRequest 400, anything else (ErrUpstreamUnreachable included) 503.
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
	// Header holds every request header; read-only.
	Header http.Header
	// LocalAddr and RemoteAddr are the addresses of the TCP connection the tunnel arrived on.
	LocalAddr, RemoteAddr net.Addr

	w        http.ResponseWriter
	r        *http.Request
	accepted *serverStream
	ended    chan struct{} // closed when the accepted stream's write side closes
}

// Accept answers 200 and returns the tunnel. Call it once, after the upstream is connected.
func (r *Request) Accept() (Conn, error) {
	if r.accepted != nil {
		return nil, errors.New("hbone: Accept called twice")
	}
	r.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(r.w)
	if err := rc.Flush(); err != nil {
		return nil, fmt.Errorf("send 200: %w", err)
	}
	r.accepted = &serverStream{body: r.r.Body, w: r.w, rc: rc, local: r.LocalAddr, remote: r.RemoteAddr, ended: r.ended}
	return r.accepted, nil
}

// Server accepts HBONE connections and hands each tunnel to a Handler.
type Server struct {
	cfg     ServerConfig
	tls     *tls.Config
	handler Handler
	log     *slog.Logger
	h1      *http.Server // carries the HTTP/2 settings and the graceful-shutdown hook
	h2      *http2.Server
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
	s := &Server{cfg: cfg, tls: tlsCfg, handler: h, log: log.With("component", "hbone-server")}
	s.h1 = &http.Server{
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          int(cfg.MaxConcurrentStreams),
			MaxReceiveBufferPerStream:     int(cfg.streamWindow()),
			MaxReceiveBufferPerConnection: int(cfg.connWindow()),
			// The smallest frame size: x/net's client holds a send buffer of this size for every
			// open stream, idle or not. 64 KiB frames gave ~10% more single-stream throughput
			// but 83 KiB per idle tunnel, past the 64 KiB budget.
			MaxReadFrameSize: 16 << 10,
			SendPingTimeout:  cfg.PingInterval,
			PingTimeout:      cfg.PingTimeout,
		},
	}
	s.h2 = &http2.Server{}
	if err := http2.ConfigureServer(s.h1, s.h2); err != nil {
		return nil, fmt.Errorf("configure http2: %w", err)
	}
	return s, nil
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
	var backoff time.Duration
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			// Out of file descriptors and the like pass; keep the port served, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed, retrying", "err", err, "in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
			}
			break
		}
		backoff = 0
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
	// Graceful first: GOAWAY lets clients finish open tunnels and move new ones elsewhere.
	if sErr := s.h1.Shutdown(ctx); sErr != nil && !errors.Is(sErr, context.Canceled) {
		s.log.Debug("http2 shutdown", "err", sErr)
	}
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

// ServeConn runs the TLS handshake on c and serves HTTP/2 on it until the connection ends. It
// closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	tc := tls.Server(c, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.Debug("tls handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		s.log.Debug("peer did not negotiate h2", "remote", c.RemoteAddr(), "alpn", p)
		tc.Close()
		return
	}
	// The identity was verified in the handshake (VerifyConnection); this only reads it. x/net
	// does not expose the TLS state on CONNECT requests (no :scheme), so it travels in the context.
	state := tc.ConnectionState()
	peer, err := IdentityOf(state.PeerCertificates[0])
	if err != nil {
		tc.Close()
		return
	}
	// Handlers' contexts do not end with Serve's: on shutdown open tunnels drain (GOAWAY, then
	// DrainTimeout) instead of being cut at once.
	base := context.WithValue(context.WithoutCancel(ctx), connInfoKey{}, connInfo{peer: peer, local: c.LocalAddr(), remote: c.RemoteAddr()})
	s.h2.ServeConn(tc, &http2.ServeConnOpts{Context: base, BaseConfig: s.h1, Handler: http.HandlerFunc(s.serveHTTP)})
	tc.Close()
}

type connInfoKey struct{}

// connInfo is what the server knows about a connection, for every request on it.
type connInfo struct {
	peer          identity.Identity
	local, remote net.Addr
}

// serveHTTP checks one request and hands it to the Handler.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	req, status := s.parse(r)
	if status != http.StatusOK {
		w.WriteHeader(status)
		return
	}
	req.w, req.r = w, r
	req.ended = make(chan struct{})
	// The Handler runs on its own goroutine so that this one can return, and so end the stream,
	// as soon as the Handler closes its write side: x/net/http2 sends END_STREAM only when
	// ServeHTTP returns. Waiting for the Handler instead would leave a client that reads to end of
	// stream (an HTTP/1.0 response delimited by close) hanging after the upstream's FIN.
	done := make(chan error, 1)
	go func() { done <- s.handler.ServeHBONE(r.Context(), req) }()
	var err error
	select {
	case err = <-done:
	case <-req.ended:
	}
	if st := req.accepted; st != nil {
		// Returning ends the stream: END_STREAM, and RST_STREAM(NO_ERROR) if the client is still
		// sending; the Handler's reads then fail. Its later writes must not reach the
		// ResponseWriter, which x/net forbids after return.
		st.finish()
		return
	}
	switch {
	case errors.Is(err, ErrDenied):
		status = http.StatusUnauthorized
	case errors.Is(err, ErrBadRequest):
		status = http.StatusBadRequest
	default:
		// Unreachable upstream, and anything else that kept the tunnel from opening.
		status = http.StatusServiceUnavailable
	}
	w.WriteHeader(status)
}

// parse validates a request and builds the Request a Handler sees, or returns the status to answer.
func (s *Server) parse(r *http.Request) (*Request, int) {
	if r.Method != http.MethodConnect {
		return nil, http.StatusBadRequest
	}
	// CONNECT carries only :authority (RFC 9113 §8.5); x/net already rejects :path and :scheme.
	ap, err := netip.ParseAddrPort(r.Host)
	if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().Zone() != "" {
		return nil, http.StatusBadRequest
	}
	ci, ok := r.Context().Value(connInfoKey{}).(connInfo)
	if !ok || ci.peer.IsZero() {
		// Not reachable through ServeConn, which requires a verified client certificate.
		return nil, http.StatusUnauthorized
	}
	req := &Request{
		Authority:   ap,
		Peer:        ci.peer,
		Forwarded:   r.Header.Get(HeaderForwarded),
		Baggage:     r.Header.Get(HeaderBaggage),
		Traceparent: r.Header.Get(HeaderTraceparent),
		Header:      r.Header,
		LocalAddr:   ci.local,
		RemoteAddr:  ci.remote,
	}
	return req, http.StatusOK
}
