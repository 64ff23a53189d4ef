// The server side: every configured port gets a listener (HTTP/1.1 + h2c, gRPC, or TCP echo,
// each optionally over TLS) and answers with the "Key=Value" lines of fields.go. Rules it keeps:
//   - an HTTP answer echoes what arrived: ServiceVersion, ServicePort, Host, URL (the raw request
//     URI), Method, Proto, IP, each request header as RequestHeader=Name:value (sorted by name),
//     and Hostname (the pod's name); the query can ask for a status code (?codes=503 or
//     ?codes=500:1,200:3, weighted), response headers (?headers=Name:value,...) and a delay
//     (?delay=1s), as Istio's echo does;
//   - a TCP port writes StatusCode=200 and its fields once the client has sent something (or
//     closed), then echoes every byte back until the client closes;
//   - without a readable --crt/--key, a TLS port serves a self-signed certificate (the lab has no
//     /cert.crt baked into an image) and says so in the log.

package echoadvanced

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Protocols of a Port.
const (
	ProtoHTTP = "http"
	ProtoGRPC = "grpc"
	ProtoTCP  = "tcp"
)

// Port is one listener of the server.
type Port struct {
	Protocol string // ProtoHTTP, ProtoGRPC or ProtoTCP
	Port     int    // 0: any free port (tests)
	TLS      bool
}

// ServerConfig configures the server.
type ServerConfig struct {
	Ports      []Port
	ListenHost string // "" listens on every address; tests use 127.0.0.1
	// CertFile and KeyFile are the TLS ports' certificate; see the file comment for the fallback.
	CertFile, KeyFile string
	DisableALPN       bool
	// Reported in every answer (ServiceVersion, Cluster, IstioVersion, Namespace).
	Version, Cluster, IstioVersion, Namespace string
}

// Server is a started server.
type Server struct {
	log   *slog.Logger
	addrs []string
	lns   []net.Listener
	https []*http.Server
	grpcs []*grpc.Server
	tcp   sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{} // open TCP echo connections
}

// StartServer listens on every port of cfg and serves them until Close.
func StartServer(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	s := &Server{log: log, conns: map[net.Conn]struct{}{}}
	var cert *tls.Certificate
	for _, p := range cfg.Ports {
		if p.TLS && cert == nil {
			c, err := loadCert(cfg.CertFile, cfg.KeyFile, log)
			if err != nil {
				return nil, err
			}
			cert = &c
		}
	}
	for _, p := range cfg.Ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.ListenHost, strconv.Itoa(p.Port)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("%s port %d: %w", p.Protocol, p.Port, err)
		}
		s.lns = append(s.lns, ln)
		s.addrs = append(s.addrs, ln.Addr().String())
		port := ln.Addr().(*net.TCPAddr).Port
		switch p.Protocol {
		case ProtoHTTP:
			s.serveHTTP(ln, p, port, cfg, cert)
		case ProtoGRPC:
			g := newGRPCServer(cfg, port, p.TLS, cert)
			s.grpcs = append(s.grpcs, g)
			go func() { _ = g.Serve(ln) }()
		case ProtoTCP:
			if p.TLS {
				ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
			}
			s.tcp.Add(1)
			go s.serveTCP(ln, cfg, port)
		default:
			s.Close()
			return nil, fmt.Errorf("port %d: unknown protocol %q", p.Port, p.Protocol)
		}
		log.Info("listening", "protocol", p.Protocol, "addr", ln.Addr().String(), "tls", p.TLS)
	}
	return s, nil
}

// RunServer serves cfg until ctx ends.
func RunServer(ctx context.Context, cfg ServerConfig, log *slog.Logger) error {
	s, err := StartServer(cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	s.Close()
	return nil
}

// Addr is the address port i of the config listens on.
func (s *Server) Addr(i int) string { return s.addrs[i] }

// Close stops every listener and ends open connections.
func (s *Server) Close() {
	for _, h := range s.https {
		_ = h.Close()
	}
	for _, g := range s.grpcs {
		g.Stop()
	}
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.tcp.Wait()
}

func (s *Server) serveHTTP(ln net.Listener, p Port, port int, cfg ServerConfig, cert *tls.Certificate) {
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	h := &http.Server{
		Handler:           &httpHandler{cfg: cfg, port: port, log: s.log},
		Protocols:         protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.https = append(s.https, h)
	if !p.TLS {
		go func() { _ = h.Serve(ln) }()
		return
	}
	tc := &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
	if cfg.DisableALPN {
		// No ALPN offered at all (ServeTLS would add http/1.1): HTTP/1.1 over TLS.
		go func() { _ = h.Serve(tls.NewListener(ln, tc)) }()
		return
	}
	protos.SetHTTP2(true)
	h.TLSConfig = tc
	go func() { _ = h.ServeTLS(ln, "", "") }()
}

type httpHandler struct {
	cfg  ServerConfig
	port int
	log  *slog.Logger
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body bytes.Buffer
	if err := r.ParseForm(); err != nil {
		body.WriteString("ParseForm() error: " + err.Error() + "\n")
	}
	if d := r.FormValue("delay"); d != "" {
		if dur, err := time.ParseDuration(d); err != nil {
			body.WriteString("delay error: " + err.Error() + "\n")
		} else {
			select {
			case <-time.After(min(dur, time.Minute)):
			case <-r.Context().Done():
			}
		}
	}
	if hs := r.FormValue("headers"); hs != "" {
		for _, kv := range strings.Split(hs, ",") {
			k, v, ok := strings.Cut(kv, ":")
			if !ok {
				body.WriteString(fmt.Sprintf("response headers error: invalid %q (want name:value)\n", kv))
				continue
			}
			w.Header()[k] = []string{v} // as given: a test may want a non-canonical name
		}
	}
	code, err := pickCode(r.FormValue("codes"))
	if err != nil {
		body.WriteString("codes error: " + err.Error() + "\n")
	}
	h.payload(r, &body)
	w.Header().Set("Content-Type", "application/text")
	w.WriteHeader(code)
	_, _ = w.Write(body.Bytes())
	h.log.Debug("request", "proto", r.Proto, "method", r.Method, "host", r.Host, "uri", r.RequestURI, "code", code)
}

// payload writes the fields that describe the request.
func (h *httpHandler) payload(r *http.Request, body *bytes.Buffer) {
	writeField(body, fieldServiceVersion, h.cfg.Version)
	writeField(body, fieldServicePort, strconv.Itoa(h.port))
	writeField(body, fieldHost, r.Host)
	writeField(body, fieldURL, r.RequestURI)
	writeNonEmpty(body, fieldCluster, h.cfg.Cluster)
	writeNonEmpty(body, fieldIstioVersion, h.cfg.IstioVersion)
	writeNonEmpty(body, fieldNamespace, h.cfg.Namespace)
	writeField(body, fieldMethod, r.Method)
	writeField(body, fieldProto, r.Proto)
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	writeField(body, fieldIP, ip)
	if r.TLS != nil {
		writeNonEmpty(body, fieldAlpn, r.TLS.NegotiatedProtocol)
		writeNonEmpty(body, fieldSNI, r.TLS.ServerName)
	}
	writeHeaders(body, r.Header)
	writeField(body, fieldHostname, hostname())
}

// writeHeaders writes one RequestHeader line a value, names sorted.
func writeHeaders(w io.Writer, hdr map[string][]string) {
	keys := make([]string, 0, len(hdr))
	for k := range hdr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range hdr[k] {
			writeField(w, fieldRequestHeader, k+":"+v)
		}
	}
}

// pickCode chooses the status of an answer from ?codes=code[:weight][,code[:weight]]...
func pickCode(spec string) (int, error) {
	if spec == "" {
		return http.StatusOK, nil
	}
	type choice struct{ code, weight int }
	var choices []choice
	total := 0
	for _, part := range strings.Split(spec, ",") {
		c, w, hasWeight := strings.Cut(part, ":")
		code, err := strconv.Atoi(c)
		if err != nil || code < 200 || code >= 600 {
			return http.StatusBadRequest, fmt.Errorf("invalid code %q", c)
		}
		weight := 1
		if hasWeight {
			if weight, err = strconv.Atoi(w); err != nil || weight < 0 {
				return http.StatusBadRequest, fmt.Errorf("invalid weight %q", w)
			}
		}
		choices = append(choices, choice{code, weight})
		total += weight
	}
	if total == 0 {
		return choices[len(choices)-1].code, nil
	}
	n := mrand.IntN(total)
	for _, c := range choices {
		if n < c.weight {
			return c.code, nil
		}
		n -= c.weight
	}
	return choices[len(choices)-1].code, nil
}

func (s *Server) serveTCP(ln net.Listener, cfg ServerConfig, port int) {
	defer s.tcp.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.tcp.Add(1)
		go func() {
			defer s.tcp.Done()
			tcpEcho(c, cfg, port)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			_ = c.Close()
		}()
	}
}

// tcpEcho answers one TCP connection: the fields after the first read, then an echo.
func tcpEcho(c net.Conn, cfg ServerConfig, port int) {
	buf := make([]byte, 4096)
	first := true
	for {
		n, err := c.Read(buf)
		if first {
			first = false
			var f bytes.Buffer
			writeField(&f, fieldStatusCode, strconv.Itoa(http.StatusOK))
			writeNonEmpty(&f, fieldCluster, cfg.Cluster)
			writeNonEmpty(&f, fieldIstioVersion, cfg.IstioVersion)
			writeNonEmpty(&f, fieldNamespace, cfg.Namespace)
			writeField(&f, fieldServiceVersion, cfg.Version)
			writeField(&f, fieldServicePort, strconv.Itoa(port))
			ip, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			writeField(&f, fieldIP, ip)
			writeField(&f, fieldProto, "TCP")
			writeField(&f, fieldHostname, hostname())
			if _, werr := c.Write(f.Bytes()); werr != nil {
				return
			}
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// loadCert reads the key pair, or makes a self-signed one when it cannot.
func loadCert(certFile, keyFile string, log *slog.Logger) (tls.Certificate, error) {
	if certFile != "" && keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err == nil {
			return c, nil
		}
		log.Warn("TLS key pair unreadable: serving a self-signed certificate", "crt", certFile, "key", keyFile, "err", err)
	} else {
		log.Warn("no TLS key pair given: serving a self-signed certificate")
	}
	return selfSigned()
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	name := hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cmp.Or(name, "echo-advanced")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if name != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, name)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
