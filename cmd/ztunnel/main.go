// Command ztunnel is Ambient's per-node L4 proxy: in-pod listeners, HBONE both ways, L4 policy.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-mesh/ambient/internal/logwriter"
	"github.com/ambient-mesh/ambient/internal/memlimit"
	"github.com/ambient-mesh/ambient/ztunnel/server"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := server.Default()
	cfg.RegisterFlags(flag.CommandLine)
	flag.Parse()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "ztunnel: invalid configuration:\n%v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	// Access log lines, one per connection, go out in batches (at most a second late); other
	// lines at once. Both write whole lines to stdout, so they never interleave inside a line.
	access := logwriter.New(os.Stdout)
	defer access.Close()
	cfg.AccessLog = access
	memlimit.Set(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, cfg, log); err != nil {
		log.Error("ztunnel failed", "err", err)
		return 1
	}
	return 0
}
