package proxy

// HTTP handling: one tunnel's requests, routed by the Service's rules.
//
// Rules kept here (Gateway API HTTPRoute semantics, DESIGN.md §2):
//   - The first rule that matches applies. A Service with routes answers 404 to a request none
//     matches; one without routes serves every request itself.
//   - Filters run in the order written; a redirect answers at once. Request header modifiers,
//     rewrites and mirrors apply before the backend is chosen, then the backend's own filters.
//   - A rule with no usable backend (none, weights of 0, or a reference that did not resolve)
//     answers 500; a backend without a ready endpoint 503; a timeout 504.
//   - A rule with session persistence sends a request carrying a valid session to the backend and
//     ready endpoint it names (waypoint/route/session.go); otherwise, or when that endpoint is
//     gone, the response carries a new session for the endpoint that answered.
//   - A retried request is replayed from a buffered copy of its body (up to maxReplayBody);
//     a larger body is sent once. Upgrades (WebSocket) are never retried.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	"github.com/ambient-mesh/ambient/waypoint/authz"
	"github.com/ambient-mesh/ambient/waypoint/jwt"
	"github.com/ambient-mesh/ambient/waypoint/route"
)

// maxReplayBody bounds the request body kept to replay a retried or mirrored request.
const maxReplayBody = 1 << 20

// serveHTTP serves HTTP/1.1 or cleartext HTTP/2 (by its preface) requests on c until the client
// closes it or ctx ends.
func (p *Proxy) serveHTTP(ctx context.Context, c net.Conn, t *tunnel) {
	done := make(chan struct{})
	var once sync.Once
	finish := func() { once.Do(func() { close(done) }) }
	var hijacked atomic.Bool
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.serveRequest(w, r, t)
			if hijacked.Load() {
				finish() // an upgraded connection ends with its handler
			}
		}),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateHijacked:
				hijacked.Store(true)
			case http.StateClosed:
				finish()
			}
		},
		ErrorLog: slog.NewLogLogger(p.d.Log.Handler(), slog.LevelDebug),
	}
	go func() { _ = srv.Serve(&oneConn{c: c, done: done}) }()
	select {
	case <-done:
	case <-ctx.Done():
		c.Close()
		<-done
	}
}

// oneConn is a listener that yields one connection, then blocks until done.
type oneConn struct {
	mu   sync.Mutex
	c    net.Conn
	done chan struct{}
}

func (l *oneConn) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return &net.TCPAddr{} }

// serveRequest routes one request.
func (p *Proxy) serveRequest(w http.ResponseWriter, r *http.Request, t *tunnel) {
	start := p.d.Now()
	v := p.cur.get()
	key := t.key
	rec := p.newRecord(t)
	rec.method, rec.path, rec.proto = r.Method, r.URL.Path, protoName(r)
	sw := &statusWriter{ResponseWriter: w}
	r, endSpan := p.startSpan(r, t)
	defer func() { endSpan(rec, p.finish(rec, sw, r, start)) }()

	// RequestAuthentication, then authorization: a request with an invalid token is refused
	// (401); one without a token goes on with no request principal, for policy to decide.
	var auth jwt.Result
	if a := v.authn[key]; a != nil {
		if auth = a.Authenticate(r); auth.Err != nil {
			rec.flags, rec.err = "UAEX", auth.Err
			http.Error(sw, "Jwt verification fails", http.StatusUnauthorized)
			return
		}
	}
	if sr := v.st.Routes(key); sr != nil && len(sr.Policies) > 0 {
		if !p.authorize(sw, r, t, sr, rec, auth) {
			return
		}
	}
	var rule *route.Rule
	routed := false
	if t.svc != nil { // routes are a Service's; a workload's requests go to it as they are
		rule, routed = v.tables[key].SelectOrRouted(r, t.port, rec.srcNS)
	}
	if rule == nil && routed {
		rec.flags = "NR"
		http.Error(sw, "no route matches", http.StatusNotFound)
		return
	}
	be := &routev1.Backend{Service: key, Port: uint32(t.port), Weight: 1}
	if t.dst != nil {
		be.Service = "" // no Service: the attempts go to t.dst
	}
	var pr *routev1.Rule
	var respMods []*routev1.HeaderModifier
	var mirrors []*routev1.Mirror
	var sess *route.Session // the request's valid session, on a rule with session persistence
	if rule != nil {
		pr = rule.Proto
		rec.route = pr.Route
		if handled := p.applyFilters(sw, r, pr.Match, pr.Filters, &respMods, &mirrors); handled {
			return
		}
		be = route.PickBackend(pr.Backends, func(n uint64) uint64 { return rand.Uint64N(n) })
		if sp := pr.GetSession(); sp != nil {
			if s, ok := route.SessionOf(r, sp, p.d.Now()); ok {
				if i := slices.IndexFunc(pr.Backends, func(b *routev1.Backend) bool { return b.Service == s.Service && b.Weight > 0 }); i >= 0 {
					be, sess = pr.Backends[i], &s // the session's backend, whatever the weights say
				}
			}
		}
		if be == nil || be.Service == "" {
			rec.flags = "NR"
			http.Error(sw, "no valid backend for this route", http.StatusInternalServerError)
			return
		}
		if handled := p.applyFilters(sw, r, pr.Match, be.Filters, &respMods, &mirrors); handled {
			return
		}
	}
	rec.dstService = be.Service
	p.forward(sw, r, v, be, pr, respMods, mirrors, rec, t, sess)
}

// authorize applies the Service's authorization policies to r; it answers 403 itself and
// reports false when they deny it.
func (p *Proxy) authorize(w http.ResponseWriter, r *http.Request, t *tunnel, sr *routev1.ServiceRoutes, rec *record, auth jwt.Result) bool {
	req := &authz.Request{Principal: rec.srcPrincipal, Namespace: rec.srcNS, SourceIP: t.srcIP, RemoteIP: t.srcIP,
		Host: r.Host, Method: r.Method, Path: r.URL.Path, Port: t.port, Header: r.Header,
		RequestPrincipal: auth.Principal, Claims: auth.Claims}
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
			req.RemoteIP = a.Unmap()
		}
	}
	d := authz.Check(sr.Policies, req)
	for _, a := range d.Audited {
		p.d.Log.Info("audit", "policy", a, "method", r.Method, "path", r.URL.Path, "src_principal", rec.srcPrincipal)
	}
	if d.Allow {
		return true
	}
	rec.flags, rec.err = "RBAC", fmt.Errorf("%s %s", d.Reason, d.Policy)
	http.Error(w, "RBAC: access denied", http.StatusForbidden)
	return false
}

// applyFilters applies a rule's or backend's filters to r; it reports whether it answered the
// request itself (a redirect, a CORS preflight).
func (p *Proxy) applyFilters(w http.ResponseWriter, r *http.Request, m *routev1.Match, fs []*routev1.Filter,
	respMods *[]*routev1.HeaderModifier, mirrors *[]*routev1.Mirror,
) bool {
	for _, f := range fs {
		switch k := f.Kind.(type) {
		case *routev1.Filter_RequestHeaders:
			route.ModifyHeaders(r.Header, k.RequestHeaders)
		case *routev1.Filter_ResponseHeaders:
			*respMods = append(*respMods, k.ResponseHeaders)
		case *routev1.Filter_Redirect:
			code, loc := route.RedirectTarget(r, m, k.Redirect)
			for _, rm := range *respMods {
				route.ModifyHeaders(w.Header(), rm)
			}
			w.Header().Set("Location", loc)
			w.WriteHeader(code)
			return true
		case *routev1.Filter_Rewrite:
			route.Rewrite(r, m, k.Rewrite)
		case *routev1.Filter_Mirror:
			*mirrors = append(*mirrors, k.Mirror)
		case *routev1.Filter_Cors:
			// Compiled per request: only the protos reach here (compiling is cheap). The
			// configuration's validation refused a filter that does not compile.
			cors, err := route.CompileCORS(k.Cors)
			if err != nil {
				http.Error(w, "invalid CORS filter", http.StatusInternalServerError)
				return true
			}
			if answer, hm := cors.Preflight(r); answer {
				for _, rm := range append(*respMods, hm) {
					route.ModifyHeaders(w.Header(), rm)
				}
				w.WriteHeader(http.StatusOK)
				return true
			}
			*respMods = append(*respMods, cors.Response(r))
		}
	}
	return false
}

// forward sends r to backend be, with the rule's timeouts and retries.
func (p *Proxy) forward(w *statusWriter, r *http.Request, v *view, be *routev1.Backend, pr *routev1.Rule,
	respMods []*routev1.HeaderModifier, mirrors []*routev1.Mirror, rec *record, t *tunnel, sess *route.Session,
) {
	ctx := r.Context()
	if ms := pr.GetRequestTimeoutMs(); ms > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	upgrade := r.Header.Get("Upgrade") != ""
	retry := pr.GetRetry()
	var body []byte
	replay := false
	// (A small body of known length goes out with its headers in one write: h1Transport reads
	// it first.)
	if (retry.GetAttempts() > 0 || len(mirrors) > 0) && !upgrade {
		if r.Body == nil || r.Body == http.NoBody {
			replay = true
		} else if b, err := io.ReadAll(io.LimitReader(r.Body, maxReplayBody+1)); err == nil && len(b) <= maxReplayBody {
			body, replay = b, true
			r.Body = io.NopCloser(bytes.NewReader(b))
		} else if err == nil {
			r.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
		}
	}
	for _, m := range mirrors {
		if replay {
			p.mirror(r, v, m, body)
		}
	}
	at := &attempts{p: p, v: v, be: be, retry: retry, replay: replay, body: body, h2: r.ProtoMajor == 2, rec: rec, srcIP: t.srcIP,
		backendTimeout: time.Duration(pr.GetBackendRequestTimeoutMs()) * time.Millisecond}
	if t.dst != nil {
		at.direct = endpoint{w: t.dst, addr: t.addr}
	}
	if sess != nil {
		at.pin = sess.Endpoint
	}
	if upgrade {
		at.retry = nil
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "upstream" // the endpoint is chosen per attempt
			pr.Out.Host = r.Host
		},
		Transport: at,
		// No FlushInterval: a response of known length goes to the client in one write, headers
		// and body together (-1 would flush the headers on their own first, from a timer).
		// Streams (no length, or server-sent events) are flushed as they come anyway.
		BufferPool: copyBuffers,
		ModifyResponse: func(resp *http.Response) error {
			for _, m := range respMods {
				route.ModifyHeaders(resp.Header, m)
			}
			// A new session, or one whose endpoint is gone: the client gets the endpoint that
			// answered.
			if sp := pr.GetSession(); sp != nil && at.chosen.IsValid() && (sess == nil || sess.Endpoint != at.chosen) {
				route.SetSession(resp.Header, sp, route.Session{Service: be.Service, Endpoint: at.chosen, Start: p.d.Now()})
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			code := http.StatusServiceUnavailable
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				code, rec.flags = http.StatusGatewayTimeout, "UT"
			case errors.Is(err, errNoEndpoint):
				rec.flags = "UH"
			case errors.Is(err, errOverflow):
				rec.flags = "UO"
			default:
				rec.flags = "UF"
			}
			rec.err = err
			http.Error(w, http.StatusText(code), code)
		},
	}
	rp.ServeHTTP(w, r.WithContext(ctx))
}

// copyBuffers are the buffers responses are copied through (ReverseProxy would allocate 32 KiB
// per request).
var copyBuffers = &bufferPool{sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// attempts is the transport of one request: each round trip is one attempt at an endpoint of
// the backend, repeated while the retry policy asks for it.
type attempts struct {
	p              *Proxy
	v              *view
	be             *routev1.Backend
	retry          *routev1.Retry
	replay         bool
	body           []byte
	h2             bool
	backendTimeout time.Duration
	srcIP          netip.Addr
	rec            *record
	// direct is the endpoint of a request addressed to a workload, instead of the backend's.
	direct endpoint
	// pin is the endpoint a session names, tried first while it is ready; chosen the endpoint
	// of the last attempt.
	pin, chosen netip.AddrPort
}

func (a *attempts) RoundTrip(req *http.Request) (*http.Response, error) {
	n := 1
	if a.replay && a.retry != nil {
		n += int(a.retry.Attempts)
	}
	policy := a.v.st.Routes(a.be.Service).GetTrafficPolicy()
	slot, err := a.p.up.limiter(a.be.Service, policy).acquire(req.Context())
	if err != nil {
		return nil, err
	}
	tr := a.p.up.transport(a.be.Service, a.h2, policy)
	key := hashKey(req, policy, a.srcIP)
	var tried []netip.AddrPort
	for i := 0; ; i++ {
		ep, report, err := a.direct, func(int) {}, error(nil)
		if ep.w == nil && i == 0 && a.pin.IsValid() {
			ep, _ = a.v.readyAt(a.be.Service, uint16(a.be.Port), a.pin)
		}
		if ep.w == nil {
			ep, report, err = a.p.up.pick(a.v, a.be.Service, uint16(a.be.Port), tried, key)
		}
		if err != nil {
			slot()
			return nil, err
		}
		tried, a.chosen = append(tried, ep.addr), ep.addr
		a.rec.dstWorkload, a.rec.dstNS, a.rec.dstPrincipal = workloadName(ep.w), ep.w.Namespace, principalOf(ep.w)
		resp, cancel, err := a.try(req, ep, tr)
		status := 0
		if err == nil {
			status = resp.StatusCode
		}
		if i+1 < n && route.Retryable(a.retry, status) && req.Context().Err() == nil {
			if resp != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
			}
			cancel()
			report(status)
			a.rec.retries++
			if !sleep(req.Context(), time.Duration(a.retry.BackoffMs)*time.Millisecond) {
				slot()
				return nil, req.Context().Err()
			}
			continue
		}
		if err != nil {
			cancel()
			report(0)
			slot()
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			report(status) // the upgraded stream is not a request in flight
			slot()
			return resp, nil
		}
		resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { cancel(); report(status); slot() }}
		return resp, nil
	}
}

// hashKey is a request's key for a consistent-hash balancer: the header, cookie, query
// parameter or source address the DestinationRule names.
func hashKey(r *http.Request, p *routev1.TrafficPolicy, src netip.Addr) string {
	if p.GetLoadBalancer() != routev1.TrafficPolicy_CONSISTENT_HASH {
		return ""
	}
	switch {
	case p.HashHeader != "":
		return r.Header.Get(p.HashHeader)
	case p.HashCookie != "":
		if c, err := r.Cookie(p.HashCookie); err == nil {
			return c.Value
		}
	case p.HashQueryParameter != "":
		return r.URL.Query().Get(p.HashQueryParameter)
	case p.HashSourceIp && src.IsValid():
		return src.String()
	}
	return ""
}

// try sends one attempt to ep, bounded by the backend request timeout; done ends the attempt
// (after its response body is read).
func (a *attempts) try(req *http.Request, ep endpoint, tr http.RoundTripper) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(req.Context())
	if a.backendTimeout > 0 {
		ctx, cancel = context.WithTimeout(req.Context(), a.backendTimeout)
	}
	// A shallow copy: each attempt only changes the context, URL and body (the transport does
	// not write the header, which ReverseProxy already copied for this request).
	out := req.WithContext(ctx)
	u := *req.URL
	u.Host = ep.addr.String()
	out.URL = &u
	if a.replay && a.body != nil {
		out.Body = io.NopCloser(bytes.NewReader(a.body))
		out.ContentLength = int64(len(a.body))
	}
	resp, err := tr.RoundTrip(out)
	return resp, cancel, err
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// doneBody calls done once, when the response body is closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// mirror sends a copy of r to the mirror's backend and forgets the answer.
func (p *Proxy) mirror(r *http.Request, v *view, m *routev1.Mirror, body []byte) {
	if m.GetBackend().GetService() == "" {
		return
	}
	if f := m.GetFractionPpm(); f < 1_000_000 && rand.Uint32N(1_000_000) >= f {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	at := &attempts{p: p, v: v, be: m.Backend, h2: r.ProtoMajor == 2, rec: &record{}}
	go func() {
		defer cancel()
		resp, err := at.RoundTrip(out)
		if err != nil {
			p.d.Log.Debug("mirror failed", "backend", m.Backend.Service, "err", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
}

// statusWriter records the status and size of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack (streaming, WebSocket).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func protoName(r *http.Request) string {
	if r.ProtoMajor == 2 {
		if ct := r.Header.Get("Content-Type"); ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") {
			return "grpc"
		}
		return "http/2"
	}
	return "http/1.1"
}
