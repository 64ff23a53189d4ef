// Command ambientctl operates the Ambient mesh; see internal/ambientctl.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/ambient-mesh/ambient/internal/ambientctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err := ambientctl.NewCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	switch {
	case errors.Is(err, ambientctl.ErrProblems):
		os.Exit(1) // already reported
	case err != nil:
		fmt.Fprintln(os.Stderr, "ambientctl:", err)
		os.Exit(1)
	}
}
