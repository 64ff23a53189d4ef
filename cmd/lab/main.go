// Command lab runs the project's test cluster: `lab up`, `lab down`, `lab status`,
// `lab exec <ns>/<pod> -- <cmd>`. It is also the lab kubelet and the pods' init (internal).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-mesh/ambient/e2e/lab"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return lab.Command(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
