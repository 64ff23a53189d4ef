// Command echo is the ambient/echo image: an HTTP/1.1 + h2c server on 8080 that answers with
// JSON of what it received, and a TCP echo on 9090.
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
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "echo")
	if err := images.RunEcho(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	return 0
}
