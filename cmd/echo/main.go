// Command echo is the ambient/echo image: an HTTP/1.1 + h2c server on 8080 that answers with
// JSON of what it received, a TCP echo on 9090 and a source on 9091 (zeros until the client
// leaves: throughput); with -tls-cert, the same echo and source over mutual TLS 1.3 on 9443/9444.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-mesh/ambient/e2e/images"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := images.DefaultEcho()
	flag.StringVar(&cfg.HTTPAddr, "http", cfg.HTTPAddr, "HTTP listen address")
	flag.StringVar(&cfg.TCPAddr, "tcp", cfg.TCPAddr, "TCP echo listen address")
	flag.StringVar(&cfg.SourceAddr, "source", cfg.SourceAddr, "listen address of the source (writes until the client leaves)")
	flag.StringVar(&cfg.GreetAddr, "greet", cfg.GreetAddr, "listen address of the server-first echo (a greeting line, then an echo)")
	flag.StringVar(&cfg.TLSAddr, "tls", cfg.TLSAddr, "listen address of the mutual TLS 1.3 echo (with -tls-cert)")
	flag.StringVar(&cfg.GRPCAddr, "grpc", cfg.GRPCAddr, "listen address of the gRPC health service (empty: none)")
	flag.StringVar(&cfg.TLSSourceAddr, "tls-source", cfg.TLSSourceAddr, "listen address of the mutual TLS 1.3 source (with -tls-cert)")
	cert := flag.String("tls-cert", "", "server certificate: serve -tls and -tls-source")
	key := flag.String("tls-key", "", "server key")
	ca := flag.String("tls-ca", "", "CA that clients' certificates must chain to")
	flag.Parse()
	if *cert != "" {
		var err error
		if cfg.TLS, err = images.MutualTLS(*cert, *key, *ca, ""); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "echo")
	if err := images.RunEcho(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	return 0
}
