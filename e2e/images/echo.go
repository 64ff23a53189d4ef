// Package images holds the programs behind the lab's test images: ambient/echo, ambient/client
// and ambient/zdspeer (a stand-in for ztunnel on the node agent's ZDS socket). They are test
// workloads, not mesh components.
package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// EchoConfig configures the echo server.
type EchoConfig struct {
	HTTPAddr string // HTTP/1.1 and h2c
	TCPAddr  string // raw TCP echo
}

// DefaultEcho returns the ports the ambient/echo image listens on.
func DefaultEcho() EchoConfig { return EchoConfig{HTTPAddr: ":8080", TCPAddr: ":9090"} }

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
	log.Info("echo serving", "http", hl.Addr().String(), "tcp", tl.Addr().String())
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(hl) }()
	go func() { errc <- serveTCPEcho(tl) }()
	select {
	case <-ctx.Done():
		tl.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		tl.Close()
		srv.Close()
		return err
	}
}

func serveTCPEcho(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}
