// Command zdspeer is the ambient/zdspeer test image: a stand-in for ztunnel that takes pods from
// the node agent over ZDS and answers captured connections with where they landed.
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
	"github.com/ambient-mesh/ambient/redirect"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := images.ZDSPeerConfig{Socket: "/var/run/ambient/ztunnel.sock", PinDir: redirect.DefaultPinDir, Node: os.Getenv("NODE_NAME")}
	flag.StringVar(&cfg.Socket, "socket", cfg.Socket, "the node agent's ZDS socket")
	flag.StringVar(&cfg.PinDir, "pin-dir", cfg.PinDir, "the redirector's pin directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "zdspeer")
	if err := images.RunZDSPeer(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "zdspeer:", err)
		return 1
	}
	return 0
}
