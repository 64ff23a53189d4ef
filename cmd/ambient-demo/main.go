// Command ambient-demo is `make demo`'s walk through the mesh on the lab; see e2e/demo.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/ambient-mesh/ambient/e2e/demo"
	"github.com/ambient-mesh/ambient/e2e/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	root, err := lab.FindRoot(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	if _, err := demo.Run(ctx, lab.Default(root), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
