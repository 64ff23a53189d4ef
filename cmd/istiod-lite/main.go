// Command istiod-lite is Ambient's control plane: Kubernetes watches, delta xDS and the CA.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-mesh/ambient/internal/memlimit"
	"github.com/ambient-mesh/ambient/istiod-lite/server"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := server.Default()
	finish := cfg.RegisterFlags(flag.CommandLine)
	flag.Parse()
	finish()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "istiod-lite: invalid configuration:\n%v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	memlimit.Set(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, log, cfg); err != nil {
		log.Error("istiod-lite failed", "err", err)
		return 1
	}
	return 0
}
