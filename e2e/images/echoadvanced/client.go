// The client side (Istio echo's "forwarder"): Forward sends Count requests to a URL and returns
// one output a request, in the format of fields.go. Rules it keeps:
//   - schemes http, https, grpc and tcp; a URL without a scheme is http (as curl);
//   - the path is sent exactly as given (no normalisation), and a "Host" header sets the
//     request's Host (:authority for gRPC) instead of being sent as a header;
//   - HTTP/1.1 uses a new connection for each request (so an L4 balancer sees every request);
//     h2c/h2 (--http2) and gRPC share one connection unless NewConnectionPerRequest;
//   - redirects are not followed unless FollowRedirects: the 3xx itself is the answer;
//   - an HTTP output is: [i] Url=, [i] Header= (each header sent, sorted), [i] SourceIP=,
//     [i] Latency=, [i] ActiveRequests=, [i] StatusCode=, [i] ResponseHeader= (sorted), then
//     the body as [i body] lines; gRPC and TCP outputs carry the server's StatusCode as a body
//     line;
//   - at most 20 requests are in flight, each bounded by Timeout (Istio bounds the whole set by
//     it; per request is kinder to a 500-request batch on a 2-core lab); any failed request
//     fails the whole call (the command then prints nothing on stdout and exits non-zero, as
//     Istio's).

package echoadvanced

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// Header is one request header, in the order given.
type Header struct{ Name, Value string }

// Request is what the client command (or a ForwardEcho call) asks for.
type Request struct {
	URL                     string
	Count                   int           // 0: 1
	QPS                     int           // 0: as fast as the concurrency allows
	Timeout                 time.Duration // each request's; 0: 5s
	Headers                 []Header
	Method                  string // HTTP; "": GET
	Message                 string // gRPC Echo message, TCP payload; "" for TCP: HelloWorld
	HTTP2                   bool   // h2c prior knowledge for http://, h2 for https://
	FollowRedirects         bool
	NewConnectionPerRequest bool
	CAFile                  string // verify an https/TLS server against it; otherwise not verified
	InsecureSkipVerify      bool
	ServerName              string // SNI; "": the Host header, else the URL's host
}

const maxInFlight = 20

// Forward sends the requests and returns their outputs in index order.
func Forward(ctx context.Context, r Request) ([]string, error) {
	if r.Count <= 0 {
		r.Count = 1
	}
	if r.Timeout <= 0 {
		r.Timeout = 5 * time.Second
	}
	if !strings.Contains(r.URL, "://") {
		r.URL = "http://" + r.URL
	}
	scheme := strings.ToLower(r.URL[:strings.Index(r.URL, "://")])
	hdr, host := http.Header{}, ""
	for _, h := range r.Headers {
		if strings.EqualFold(h.Name, "Host") {
			host = h.Value
			continue
		}
		hdr.Add(h.Name, h.Value)
	}
	f := &forwarder{r: r, hdr: hdr, host: host}
	var err error
	switch scheme {
	case "http", "https":
		err = f.setupHTTP(scheme)
	case "grpc":
		f.do = f.grpcRequest
		if !r.NewConnectionPerRequest {
			if f.conn, err = dialGRPC(f.address(), host, nil); err == nil {
				defer f.conn.Close()
			}
		}
	case "tcp":
		f.do = f.tcpRequest
	default:
		err = fmt.Errorf("unsupported scheme %q in %s", scheme, r.URL)
	}
	if err != nil {
		return nil, err
	}
	if f.shared != nil {
		defer f.shared.CloseIdleConnections()
	}
	return f.run(ctx)
}

type forwarder struct {
	r      Request
	hdr    http.Header // without Host
	host   string
	tls    *tls.Config
	shared *http.Transport  // HTTP/2: one connection for all requests
	conn   *grpc.ClientConn // gRPC: likewise
	do     func(ctx context.Context, i int, out *bytes.Buffer) error
	active atomic.Int64
}

func (f *forwarder) run(ctx context.Context) ([]string, error) {
	outs := make([]string, f.r.Count)
	errs := make([]error, f.r.Count)
	sem := make(chan struct{}, maxInFlight)
	var tick *time.Ticker
	if f.r.QPS > 0 {
		tick = time.NewTicker(time.Second / time.Duration(f.r.QPS))
		defer tick.Stop()
	}
	var wg sync.WaitGroup
	for i := range f.r.Count {
		if tick != nil && i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f.active.Add(1)
			defer f.active.Add(-1)
			rctx, cancel := context.WithTimeout(ctx, f.r.Timeout)
			defer cancel()
			var out bytes.Buffer
			errs[i] = f.do(rctx, i, &out)
			outs[i] = out.String()
		}()
	}
	wg.Wait()
	n, first := 0, error(nil)
	for i, err := range errs {
		if err != nil {
			if first == nil {
				first = fmt.Errorf("request %d: %w", i, err)
			}
			n++
		}
	}
	if n > 0 {
		return nil, fmt.Errorf("%d/%d requests had errors; first error: %w", n, f.r.Count, first)
	}
	return outs, nil
}

// address is the URL's host:port, for the schemes that dial it directly.
func (f *forwarder) address() string {
	a := f.r.URL[strings.Index(f.r.URL, "://")+3:]
	if i := strings.IndexByte(a, '/'); i >= 0 {
		a = a[:i]
	}
	return a
}

func (f *forwarder) tlsConfig(alpn ...string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: f.r.ServerName, NextProtos: alpn, MinVersion: tls.VersionTLS12}
	if tc.ServerName == "" {
		tc.ServerName = f.host
		if h, _, err := net.SplitHostPort(f.host); err == nil {
			tc.ServerName = h
		}
	}
	if f.r.CAFile == "" || f.r.InsecureSkipVerify {
		tc.InsecureSkipVerify = true // a test client: the lab's servers have self-signed certificates
		return tc, nil
	}
	pem, err := os.ReadFile(f.r.CAFile)
	if err != nil {
		return nil, err
	}
	tc.RootCAs = x509.NewCertPool()
	if !tc.RootCAs.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate in " + f.r.CAFile)
	}
	return tc, nil
}

func (f *forwarder) setupHTTP(scheme string) error {
	f.do = f.httpRequest
	if scheme == "https" {
		alpn := "http/1.1"
		if f.r.HTTP2 {
			alpn = "h2"
		}
		var err error
		if f.tls, err = f.tlsConfig(alpn); err != nil {
			return err
		}
	}
	if f.r.HTTP2 && !f.r.NewConnectionPerRequest {
		f.shared = f.transport()
	}
	return nil
}

// transport is an HTTP/1.1 transport that keeps no connection, or with HTTP2 one for h2c/h2.
func (f *forwarder) transport() *http.Transport {
	t := &http.Transport{TLSClientConfig: f.tls, Proxy: nil, DialContext: (&net.Dialer{Timeout: f.r.Timeout}).DialContext}
	t.Protocols = new(http.Protocols)
	switch {
	case !f.r.HTTP2:
		t.Protocols.SetHTTP1(true)
		t.DisableKeepAlives = true
	case f.tls != nil:
		t.Protocols.SetHTTP2(true)
	default:
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

func (f *forwarder) httpRequest(ctx context.Context, i int, out *bytes.Buffer) error {
	writeReqField(out, i, fieldForwarderURL, f.r.URL)
	base, path := splitPath(f.r.URL)
	method := f.r.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, base, nil)
	if err != nil {
		return err
	}
	req.URL.Opaque = path // sent as given
	req.Host = f.host
	req.Header = f.hdr.Clone()
	writeSentHeaders(out, i, f.hdr)
	var local string
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) { local, _, _ = net.SplitHostPort(ci.Conn.LocalAddr().String()) },
	}))
	t := f.shared
	if t == nil {
		t = f.transport()
		defer t.CloseIdleConnections()
	}
	c := &http.Client{Transport: t}
	if !f.r.FollowRedirects {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	writeReqField(out, i, fieldSourceIP, local)
	writeReqField(out, i, fieldLatency, time.Since(start).String())
	writeReqField(out, i, fieldActiveRequests, strconv.FormatInt(f.active.Load(), 10))
	writeReqField(out, i, fieldStatusCode, strconv.Itoa(resp.StatusCode))
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range resp.Header[k] {
			writeReqField(out, i, fieldResponseHeader, k+":"+v)
		}
	}
	for _, line := range strings.Split(string(body), "\n") {
		if line != "" {
			writeBodyLine(out, i, line)
		}
	}
	return nil
}

// splitPath cuts scheme://authority from the path (and query), which stays as written.
func splitPath(raw string) (base, path string) {
	start := strings.Index(raw, "://") + 3
	if i := strings.IndexByte(raw[start:], '/'); i >= 0 {
		return raw[:start+i], raw[start+i:]
	}
	if i := strings.IndexByte(raw[start:], '?'); i >= 0 {
		return raw[:start+i], "/" + raw[start+i:]
	}
	return raw, ""
}

func writeSentHeaders(out *bytes.Buffer, i int, hdr http.Header) {
	keys := make([]string, 0, len(hdr))
	for k := range hdr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range hdr[k] {
			writeReqField(out, i, fieldHeader, k+":"+v)
		}
	}
}

func (f *forwarder) grpcRequest(ctx context.Context, i int, out *bytes.Buffer) error {
	writeReqField(out, i, fieldForwarderURL, f.r.URL)
	writeSentHeaders(out, i, f.hdr)
	conn := f.conn
	if conn == nil {
		var err error
		if conn, err = dialGRPC(f.address(), f.host, nil); err != nil {
			return err
		}
		defer conn.Close()
	}
	return callEcho(ctx, conn, i, &f.r, f.hdr, out, f.active.Load)
}

func (f *forwarder) tcpRequest(ctx context.Context, i int, out *bytes.Buffer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", f.address())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	local, _, _ := net.SplitHostPort(c.LocalAddr().String())
	writeReqField(out, i, fieldSourceIP, local)
	writeReqField(out, i, fieldForwarderURL, f.r.URL)
	msg := f.r.Message
	if msg == "" {
		msg = "HelloWorld"
	}
	writeReqField(out, i, fieldEcho, msg)
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	// Read until the echo of the message is back (it comes after the server's fields).
	var got bytes.Buffer
	br := bufio.NewReader(c)
	for !strings.Contains(got.String(), msg) {
		line, err := br.ReadString('\n')
		got.WriteString(line)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
	}
	for _, line := range strings.Split(got.String(), "\n") {
		if line != "" {
			writeBodyLine(out, i, line)
		}
	}
	if want := fieldStatusCode + "=200"; !strings.Contains(got.String(), want) {
		return fmt.Errorf("no %s in the answer: %q", want, got.String())
	}
	return nil
}
