// Command client is the ambient/client image. With no arguments it stays idle so that
// `lab exec` can run commands in its pod; `client http URL` and `client tcp ADDR MSG` make requests,
// `client load INTERVAL ADDR...` opens connections until stopped and reports how many failed,
// `client hold ADDR N INTERVAL` keeps one connection busy, `client rr ...` measures open-loop
// request/response latency, `client idle ADDR N` holds N idle connections and `client alloc MIB`
// holds MIB MiB of memory.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
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
	case args[0] == "alloc" && len(args) == 2:
		// alloc MIB: take MIB MiB of memory, touch every page, then stay idle (a memory limit's test).
		mib, err := strconv.Atoi(args[1])
		if err != nil || mib <= 0 {
			fmt.Fprintln(os.Stderr, "client: alloc MIB:", args[1])
			return 2
		}
		held := make([][]byte, 0, mib)
		for range mib {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			held = append(held, b)
		}
		fmt.Printf("holding %d MiB\n", len(held))
		<-ctx.Done()
		return 0
	case args[0] == "spin" && len(args) == 1:
		// spin: keep one core busy until stopped (a cpu limit's test); then say how much it did.
		rounds := 0
		for ctx.Err() == nil {
			for i := 0; i < 1e6; i++ {
				rounds++
			}
		}
		fmt.Printf("spun %d\n", rounds)
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
	case args[0] == "load" && len(args) >= 3:
		// Until stopped (SIGTERM): a new connection every interval; then a JSON report.
		interval, err := time.ParseDuration(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "client: load interval:", err)
			return 2
		}
		_ = json.NewEncoder(os.Stdout).Encode(images.Load(ctx, args[2:], interval, *timeout))
		return 0
	case args[0] == "hold" && len(args) == 4:
		n, err := strconv.Atoi(args[2])
		interval, ierr := time.ParseDuration(args[3])
		if err != nil || ierr != nil {
			fmt.Fprintln(os.Stderr, "client: hold N INTERVAL:", errors.Join(err, ierr))
			return 2
		}
		if err := images.Hold(ctx, args[1], n, interval, *timeout); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		fmt.Printf("held %d exchanges\n", n)
		return 0
	case args[0] == "rr" && len(args) == 6:
		// rr ADDR RATE CONNS SIZE DURATION: open-loop request/response load; a JSON result.
		cfg := images.RRConfig{Addr: args[1], Timeout: *timeout}
		var errs []error
		for i, dst := range []*int{&cfg.Rate, &cfg.Conns, &cfg.Size} {
			var err error
			*dst, err = strconv.Atoi(args[2+i])
			errs = append(errs, err)
		}
		var err error
		cfg.Duration, err = time.ParseDuration(args[5])
		if err := errors.Join(append(errs, err)...); err != nil {
			fmt.Fprintln(os.Stderr, "client: rr ADDR RATE CONNS SIZE DURATION:", err)
			return 2
		}
		res, err := images.RR(ctx, cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case args[0] == "idle" && len(args) == 3:
		// idle ADDR N: N open connections until stopped; "open N" once they all are.
		n, err := strconv.Atoi(args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "client: idle ADDR N:", err)
			return 2
		}
		if err := images.HoldIdle(ctx, args[1], n, *timeout, func() { fmt.Printf("open %d\n", n) }); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintln(os.Stderr, "usage: client [-timeout d] [-h2c] [http URL | tcp ADDR MSG | load INTERVAL ADDR... | hold ADDR N INTERVAL | rr ADDR RATE CONNS SIZE DURATION | idle ADDR N]")
		return 2
	}
}
