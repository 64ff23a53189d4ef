// Package images holds the programs behind the lab's test images: ambient/echo, ambient/client
// and ambient/zdspeer (a stand-in for ztunnel on the node agent's ZDS socket). They are test
// workloads, not mesh components.
package images

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// EchoConfig configures the echo server.
type EchoConfig struct {
	HTTPAddr   string // HTTP/1.1 and h2c
	TCPAddr    string // raw TCP echo
	SourceAddr string // writes zeros until the client leaves (throughput); none when empty
	// GreetAddr speaks first, as SMTP or MySQL do: a greeting line, then it echoes; none when empty.
	GreetAddr string
	// With TLS set (mutual TLS 1.3), TLSAddr echoes and TLSSourceAddr is a source, both over TLS.
	TLS                    *tls.Config
	TLSAddr, TLSSourceAddr string
	// GRPCAddr serves gRPC (the health service), cleartext HTTP/2.
	GRPCAddr string
}

// DefaultEcho returns the ports the ambient/echo image listens on.
func DefaultEcho() EchoConfig {
	return EchoConfig{HTTPAddr: ":8080", TCPAddr: ":9090", SourceAddr: ":9091", GreetAddr: ":9092", TLSAddr: ":9443", TLSSourceAddr: ":9444", GRPCAddr: ":7070"}
}

// EchoReply is what the HTTP server answers: what it received, and who answered.
type EchoReply struct {
	Method         string              `json:"method"`
	Path           string              `json:"path"`
	Host           string              `json:"host"`
	Proto          string              `json:"proto"`
	RemoteAddr     string              `json:"remoteAddr"`
	Headers        map[string][]string `json:"headers"`
	Namespace      string              `json:"namespace"`
	Pod            string              `json:"pod"`
	ServiceAccount string              `json:"serviceAccount"`
}

// RunEcho serves until ctx is cancelled; cancellation returns nil.
func RunEcho(ctx context.Context, cfg EchoConfig, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/ws", wsEcho)
	mux.HandleFunc("/echo", echoBody)
	// ECHO_STATUS makes every answer carry that status (an endpoint that fails, for retry and
	// outlier tests); readiness (/ready) still answers 200.
	status, _ := strconv.Atoi(os.Getenv("ECHO_STATUS"))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := map[string][]string{}
		for k, v := range r.Header {
			h[k] = v
		}
		reply := EchoReply{
			Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto,
			RemoteAddr: r.RemoteAddr, Headers: h,
			Namespace: os.Getenv("POD_NAMESPACE"), Pod: os.Getenv("POD_NAME"),
			ServiceAccount: os.Getenv("SERVICE_ACCOUNT"),
		}
		w.Header().Set("Content-Type", "application/json")
		if status != 0 && r.URL.Path != "/ready" {
			w.WriteHeader(status)
		}
		_ = json.NewEncoder(w).Encode(reply)
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	srv := &http.Server{Handler: mux, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	tl, err := net.Listen("tcp", cfg.TCPAddr)
	if err != nil {
		hl.Close()
		return fmt.Errorf("listen tcp: %w", err)
	}
	listeners := []net.Listener{tl}
	defer func() { closeListeners(listeners) }()
	errc := make(chan error, 5)
	go func() { errc <- srv.Serve(hl) }()
	go func() { errc <- serveTCPEcho(tl) }()
	extra := []struct {
		addr  string
		tls   bool
		serve func(net.Listener) error
	}{
		{cfg.SourceAddr, false, serveSource},
		{cfg.GreetAddr, false, serveGreeting},
		{cfg.GRPCAddr, false, serveGRPC},
		{cfg.TLSAddr, true, serveTCPEcho},
		{cfg.TLSSourceAddr, true, serveSource},
	}
	for _, x := range extra {
		if x.addr == "" || (x.tls && cfg.TLS == nil) {
			continue
		}
		l, err := net.Listen("tcp", x.addr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("listen %s: %w", x.addr, err)
		}
		if x.tls {
			l = tls.NewListener(l, cfg.TLS)
		}
		listeners = append(listeners, l)
		go func() { errc <- x.serve(l) }()
	}
	log.Info("echo serving", "http", hl.Addr().String(), "tcp", tl.Addr().String(), "listeners", len(listeners)+1)
	select {
	case <-ctx.Done():
		closeListeners(listeners)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		srv.Close()
		return err
	}
}

func closeListeners(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// echoBody answers with the request's body: the far end of the HTTP load.
// The body is read whole first: an HTTP/1 handler may not read it once it has written.
func echoBody(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}
