// Command ambient-agent is the node agent: it enrols the node's pods in the mesh (eBPF
// redirection, ZDS hand-off to ztunnel) and serves the CNI plugin. With --uninstall it removes
// everything it put on the node and exits.
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
	"github.com/ambient-mesh/ambient/redirect/agent"
)

func main() { os.Exit(run()) }

func run() int {
	cfg := agent.Default()
	cfg.RegisterFlags(flag.CommandLine)
	uninstall := flag.Bool("uninstall", false, "remove the CNI plugin, every eBPF link and pin, and the pods' redirection annotations from this node, then exit")
	flag.Parse()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "ambient-agent: invalid configuration:\n%v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	memlimit.Set(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *uninstall {
		cs, err := agent.NewClient(cfg)
		if err != nil {
			log.Error("uninstall: kubernetes client; annotations stay", "err", err)
		}
		if err := agent.Uninstall(ctx, cfg, cs, log); err != nil {
			log.Error("uninstall failed", "err", err)
			return 1
		}
		return 0
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		log.Error("ambient-agent", "err", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		log.Error("ambient-agent failed", "err", err)
		return 1
	}
	return 0
}
