// The command lines of the image's two executables, as Istio's echo spells them. Rules it keeps:
//   - one binary: run as "client" (argv[0] named client, or a first argument "client") it is the
//     client; otherwise the server ("server" as a first argument is allowed and dropped);
//   - server: --port, --grpc and --tcp list ports (repeated or comma-separated; defaults 8080,
//     7070, 9090 as the real image, which the suite's consumer pods rely on: they pass no
//     arguments); --tls marks listed ports as TLS with --crt/--key; --version and --cluster are
//     reported in answers, $NAMESPACE as Namespace. Istio flags this stand-in does not implement
//     are accepted and logged, so a manifest that passes them still starts;
//   - client: one URL argument, flags before or after it (the suite passes
//     `client URL --method=GET -H Name:value --count=N`); -H is repeatable and is not split at
//     commas; outputs go to stdout one blank line apart; errors go to stderr with exit status 1.

package echoadvanced

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Main runs the program for os.Args-style args.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	rest := args[1:]
	if filepath.Base(args[0]) == "client" {
		return ClientMain(ctx, rest, stdout, stderr)
	}
	if len(rest) > 0 && rest[0] == "client" {
		return ClientMain(ctx, rest[1:], stdout, stderr)
	}
	if len(rest) > 0 && rest[0] == "server" {
		rest = rest[1:]
	}
	return ServerMain(ctx, rest, stderr)
}

// ClientMain is the client command.
func ClientMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var r Request
	var headers []string
	cmd := &cobra.Command{
		Use:           "client URL",
		Short:         "Send requests to URL and print what each one got back.",
		Args:          cobra.ExactArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, a []string) error {
			r.URL = a[0]
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("invalid header format: %q (want name:value)", h)
				}
				r.Headers = append(r.Headers, Header{Name: k, Value: strings.Trim(v, " ")})
			}
			outs, err := Forward(cmd.Context(), r)
			if err != nil {
				return err
			}
			for _, o := range outs {
				fmt.Fprintln(stdout, o)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&r.Count, "count", 1, "number of requests")
	fl.IntVar(&r.QPS, "qps", 0, "requests per second (0: no limit)")
	fl.DurationVar(&r.Timeout, "timeout", 5*time.Second, "timeout of each request")
	fl.StringArrayVarP(&headers, "header", "H", nil, "a request header 'Name:value' (repeatable; Host sets the authority)")
	fl.StringVar(&r.Method, "method", "", "HTTP method (default GET)")
	fl.StringVar(&r.Message, "msg", "HelloWorld", "message to send (gRPC Echo, TCP)")
	fl.BoolVar(&r.HTTP2, "http2", false, "HTTP/2: h2c with prior knowledge for http://, h2 for https://")
	fl.BoolVarP(&r.FollowRedirects, "follow-redirects", "L", false, "follow 3xx redirects")
	fl.BoolVar(&r.NewConnectionPerRequest, "new-connection-per-request", false, "a new connection for every request")
	fl.StringVar(&r.CAFile, "ca", "", "CA to verify a TLS server against (none: not verified)")
	fl.BoolVarP(&r.InsecureSkipVerify, "insecure-skip-verify", "k", false, "do not verify a TLS server")
	fl.StringVar(&r.ServerName, "server-name", "", "TLS server name (default: the Host header)")
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error %v\n", err)
		return 1
	}
	return 0
}

// ServerMain is the server command: it serves until ctx ends.
func ServerMain(ctx context.Context, args []string, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "echo-advanced")
	cfg, err := ServerFlags(args, stderr, log)
	if err == nil {
		err = RunServer(ctx, cfg, log)
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "echo-advanced:", err)
		return 1
	}
	return 0
}

var errHelp = errors.New("help requested")

// ServerFlags turns the server's command line into its config; it logs the flags it ignores.
func ServerFlags(args []string, usage io.Writer, log *slog.Logger) (ServerConfig, error) {
	var cfg ServerConfig
	var httpPorts, grpcPorts, tcpPorts, tlsPorts []int
	fl := (&cobra.Command{Use: "echo-advanced"}).Flags() // a pflag set that returns its errors
	fl.SetOutput(usage)
	help := fl.BoolP("help", "h", false, "print this help")
	fl.IntSliceVar(&httpPorts, "port", []int{8080}, "HTTP/1.1 and h2c ports")
	fl.IntSliceVar(&grpcPorts, "grpc", []int{7070}, "gRPC ports")
	fl.IntSliceVar(&tcpPorts, "tcp", []int{9090}, "TCP echo ports")
	fl.IntSliceVar(&tlsPorts, "tls", nil, "ports (of --port, --grpc or --tcp) served over TLS")
	fl.StringVar(&cfg.CertFile, "crt", "", "TLS certificate (PEM)")
	fl.StringVar(&cfg.KeyFile, "key", "", "TLS key (PEM)")
	fl.StringVar(&cfg.Version, "version", "", "reported as ServiceVersion")
	fl.StringVar(&cfg.Cluster, "cluster", "", "reported as Cluster")
	fl.StringVar(&cfg.IstioVersion, "istio-version", "", "reported as IstioVersion")
	fl.BoolVar(&cfg.DisableALPN, "disable-alpn", false, "offer no ALPN on TLS HTTP ports")
	const notImpl = "not implemented by this stand-in (accepted and ignored)"
	ignored := []string{"udp", "mtls", "hbone", "double-hbone", "bind-ip", "bind-localhost", "server-first",
		"proxy-protocol", "xds-grpc-server", "endpoint-picker"}
	for _, name := range ignored {
		fl.IntSlice(name, nil, notImpl)
	}
	fl.Int("metrics", 0, notImpl)
	for _, name := range []string{"ca", "uds", "tls-min-version"} {
		fl.String(name, "", notImpl)
	}
	fl.StringSlice("tls-curve-preferences", nil, notImpl)
	ignored = append(ignored, "metrics", "ca", "uds", "tls-min-version", "tls-curve-preferences")
	if err := fl.Parse(args); err != nil {
		return cfg, err
	}
	if *help {
		fmt.Fprintf(usage, "Usage of echo-advanced (server; `echo-advanced client --help` for the client):\n%s", fl.FlagUsages())
		return cfg, errHelp
	}
	if fl.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	for _, name := range ignored {
		if fl.Changed(name) {
			log.Warn("flag not implemented by this stand-in: ignored", "flag", "--"+name)
		}
	}
	cfg.Namespace = os.Getenv("NAMESPACE")
	isTLS := map[int]bool{}
	for _, p := range tlsPorts {
		isTLS[p] = true
	}
	used := map[int]bool{}
	add := func(proto string, ports []int) {
		for _, p := range ports {
			cfg.Ports = append(cfg.Ports, Port{Protocol: proto, Port: p, TLS: isTLS[p]})
			used[p] = true
		}
	}
	add(ProtoHTTP, httpPorts)
	add(ProtoGRPC, grpcPorts)
	add(ProtoTCP, tcpPorts)
	for _, p := range tlsPorts {
		if !used[p] {
			log.Warn("--tls names a port that no --port, --grpc or --tcp opens", "port", p)
		}
	}
	return cfg, nil
}
