// Command echo-advanced is the lab's registry.k8s.io/gateway-api/echo-advanced image (Istio's
// echo app, which the Gateway API conformance suite's mesh tests deploy): the echo server when
// run as the container's entrypoint, and the suite's `client` command when its first argument is
// "client" (or it runs under the name client). Everything is in e2e/images/echoadvanced.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-mesh/ambient/e2e/images/echoadvanced"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := echoadvanced.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
