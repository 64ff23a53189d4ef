// Command client is the ambient/client image. With no arguments it stays idle so that
// `lab exec` can run commands in its pod; `client http URL` and `client tcp ADDR MSG` make requests,
// `client load INTERVAL ADDR...` opens connections until stopped and reports how many failed,
// `client hold ADDR N INTERVAL` keeps one connection busy, `client bench ...` is the benchmark load
// generator (open-loop latency, maximum rate, throughput, connection rate, idle connections; a
// JSON result) and `client alloc MIB` holds MIB MiB of memory.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-mesh/ambient/e2e/images"
)

func main() { os.Exit(run()) }

func run() int {
	timeout := flag.Duration("timeout", 5*time.Second, "request timeout")
	h2c := flag.Bool("h2c", false, "use HTTP/2 prior knowledge (h2c)")
	method := flag.String("method", "GET", "the method of requests")
	respHeaders := flag.Bool("response-headers", false, "requests: put each response's headers in its result")
	headers := map[string][]string{}
	flag.Func("header", "a request header, 'Name: value' (repeatable)", func(v string) error {
		k, val, ok := strings.Cut(v, ":")
		if !ok {
			return errors.New("want 'Name: value'")
		}
		k = http.CanonicalHeaderKey(strings.TrimSpace(k))
		headers[k] = append(headers[k], strings.TrimSpace(val))
		return nil
	})
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
	case args[0] == "requests" && len(args) == 3:
		// requests N URL: N requests (-method, every -header), one JSON result per line.
		n, err := strconv.Atoi(args[1])
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "client: requests N URL:", args[1])
			return 2
		}
		enc := json.NewEncoder(os.Stdout)
		for _, r := range images.Requests(ctx, images.RequestSpec{URL: args[2], N: n, Method: *method,
			Header: http.Header(headers), H2C: *h2c, Timeout: *timeout, ResponseHeaders: *respHeaders}) {
			_ = enc.Encode(r)
		}
		return 0
	case args[0] == "ws" && len(args) == 3:
		// ws URL MSG: one WebSocket message there and back.
		return report(images.WebSocketEcho(ctx, args[1], args[2], *timeout))
	case args[0] == "grpc-health" && len(args) == 2:
		out, err := images.GRPCHealth(ctx, args[1], *timeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		fmt.Println(out)
		return 0
	case args[0] == "tcp" && len(args) == 3:
		return report(images.TCPEcho(ctx, args[1], args[2], *timeout))
	case args[0] == "tcp-line" && (len(args) == 2 || len(args) == 3):
		// A line exchange without half-closing: send the message (none: the server speaks
		// first), print the first line back.
		msg := ""
		if len(args) == 3 {
			msg = args[2] + "\n"
		}
		return report(images.TCPLine(ctx, args[1], msg, *timeout))
	case args[0] == "tcp-greet" && len(args) == 3:
		// A server-first exchange: read the greeting line, send the message as a line, print
		// the greeting and the line back.
		greeting, reply, err := images.TCPGreet(ctx, args[1], args[2]+"\r\n", *timeout)
		fmt.Print(greeting, reply)
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
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
	case args[0] == "bench":
		return bench(ctx, args[1:], *timeout)
	default:
		fmt.Fprintln(os.Stderr, "usage: client [-timeout d] [-h2c] [-method M] [-response-headers] [-header 'K: v']... [http URL | requests N URL | ws URL MSG | grpc-health ADDR | tcp ADDR MSG | tcp-line ADDR [MSG] | tcp-greet ADDR MSG | load INTERVAL ADDR... | hold ADDR N INTERVAL | bench -mode MODE -addr ADDR ...]")
		return 2
	}
}

// bench runs one benchmark load (images.RunLoad) and prints its JSON result; mode idle holds
// -conns open connections, prints "open N" and waits to be stopped.
func bench(ctx context.Context, args []string, timeout time.Duration) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cfg := images.LoadConfig{Timeout: timeout}
	fs.StringVar(&cfg.Mode, "mode", images.ModeRate, "rate, max, stream, connrate or idle")
	fs.StringVar(&cfg.Addr, "addr", "", "target host:port")
	fs.IntVar(&cfg.Rate, "rate", 1000, "offered requests per second (rate)")
	fs.IntVar(&cfg.Conns, "conns", 10, "connections or workers (idle: connections to hold)")
	fs.IntVar(&cfg.Size, "size", 1024, "request and response bytes")
	fs.BoolVar(&cfg.NewConn, "new", false, "a new connection per request (rate)")
	fs.DurationVar(&cfg.Duration, "duration", 5*time.Second, "how long to run")
	fs.BoolVar(&cfg.HTTP, "http", false, "HTTP/1.1 POSTs to the echo server's /echo instead of raw bytes")
	fs.StringVar(&cfg.Host, "host", "", "the HTTP Host header (default: the address)")
	cert := fs.String("tls-cert", "", "client certificate: connect over mutual TLS 1.3")
	key := fs.String("tls-key", "", "client key")
	ca := fs.String("tls-ca", "", "CA the server's certificate must chain to")
	name := fs.String("tls-name", "", "server name to verify")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cert != "" {
		var err error
		if cfg.TLS, err = images.MutualTLS(*cert, *key, *ca, *name); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 2
		}
	}
	if cfg.Mode == "idle" {
		err := images.HoldIdle(ctx, cfg.Addr, cfg.Conns, timeout, cfg.TLS, func() { fmt.Printf("open %d\n", cfg.Conns) })
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		return 0
	}
	res, err := images.RunLoad(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// report prints a command's output, or its error and exits 1.
func report(out string, err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	fmt.Print(out)
	return 0
}
