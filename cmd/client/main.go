// Command client is the ambient/client image. With no arguments it stays idle so that
// `lab exec` can run commands in its pod; `client http URL` and `client tcp ADDR MSG` make requests.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambient-mesh/ambient/e2e/images"
)

func main() { os.Exit(run()) }

func run() int {
	timeout := flag.Duration("timeout", 5*time.Second, "request timeout")
	h2c := flag.Bool("h2c", false, "use HTTP/2 prior knowledge (h2c)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	args := flag.Args()
	switch {
	case len(args) == 0:
		<-ctx.Done() // idle until stopped
		return 0
	case args[0] == "http" && len(args) == 2:
		code, body, err := images.HTTPGet(ctx, args[1], *h2c, *timeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		fmt.Print(string(body))
		if code >= 400 {
			fmt.Fprintln(os.Stderr, "client: status", code)
			return 1
		}
		return 0
	case args[0] == "tcp" && len(args) == 3:
		out, err := images.TCPEcho(ctx, args[1], args[2], *timeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		fmt.Print(out)
		return 0
	default:
		fmt.Fprintln(os.Stderr, "usage: client [-timeout d] [-h2c] [http URL | tcp ADDR MSG]")
		return 2
	}
}
