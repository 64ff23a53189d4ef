// Command waypoint is Ambient's L7 proxy: one Deployment per waypoint Gateway, deployed by
// istiod-lite. It terminates HBONE, applies HTTPRoutes and sends requests on over HBONE.
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
	"github.com/ambient-mesh/ambient/waypoint/server"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := server.Default()
	cfg.RegisterFlags(flag.CommandLine)
	flag.Parse()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "waypoint: invalid configuration:\n%v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	// Access log lines, one per request, go out in batches (at most a second late); other lines
	// at once. Both write whole lines to stdout, so they never interleave inside a line.
	access := logwriter.New(os.Stdout)
	defer access.Close()
	cfg.AccessLog = access
	memlimit.Set(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, cfg, log); err != nil {
		log.Error("waypoint failed", "err", err)
		return 1
	}
	return 0
}
