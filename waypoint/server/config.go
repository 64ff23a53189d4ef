// Package server composes a waypoint: the xDS client of istiod-lite, the waypoint's own
// certificate, the HBONE listener and the proxy, and the admin, metrics and readiness endpoints.
// It holds no protocol or routing logic itself.
package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// Config is everything a waypoint needs.
type Config struct {
	// Gateway is the waypoint's Gateway, "<namespace>/<name>"; its pods run as the service
	// account of the same name, which is the waypoint's identity.
	Gateway string
	// Pod names this replica in istiod-lite's logs (the xDS node id).
	Pod string
	// XDSAddr is istiod-lite's TLS gRPC address (xDS and CA).
	XDSAddr    string
	ServerName string
	// RootCertFile verifies istiod-lite (the istio-ca-root-cert ConfigMap).
	RootCertFile string
	// TokenFile is the waypoint's projected service-account token (audience istio-ca).
	TokenFile   string
	TrustDomain string
	HBONEAddr   string
	AdminAddr   string
	MetricsAddr string
	ReadyAddr   string
	// Wait bounds how long a handshake waits for the waypoint's certificate.
	Wait time.Duration
	// Drain bounds how long open tunnels may go on after SIGTERM.
	Drain time.Duration
	// TracingEndpoint is the OpenTelemetry collector (host:port, OTLP/gRPC) that request spans
	// are sent to; empty for none.
	TracingEndpoint string
	// TracingSampling is the percentage of requests without a sampled trace that start one.
	TracingSampling float64
	// AccessLog gets the access log lines, JSON like the log's, one Write a line from many
	// goroutines at once: it must be safe for concurrent use, as internal/logwriter and
	// os.Stdout are (not a flag; nil: stdout, a write per line).
	AccessLog io.Writer
}

// Default returns the configuration of a standard installation.
func Default() Config {
	return Config{
		Pod:          os.Getenv("POD_NAME"),
		XDSAddr:      "istiod-lite.istio-system.svc:" + strconv.Itoa(mesh.PortXDSTLS),
		ServerName:   "istiod-lite.istio-system.svc",
		RootCertFile: "/var/run/secrets/istio/root-cert.pem",
		TokenFile:    "/var/run/secrets/tokens/istio-token",
		TrustDomain:  "cluster.local",
		HBONEAddr:    ":" + strconv.Itoa(mesh.PortHBONE),
		AdminAddr:    "127.0.0.1:" + strconv.Itoa(mesh.PortAdmin),
		MetricsAddr:  ":" + strconv.Itoa(mesh.PortMetrics),
		ReadyAddr:    ":" + strconv.Itoa(mesh.PortReadiness),
		Wait:         5 * time.Second,
		Drain:        30 * time.Second,
		// Istio's default.
		TracingSampling: 1,
	}
}

// RegisterFlags binds the configuration to flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Gateway, "gateway", c.Gateway, "this waypoint's Gateway, <namespace>/<name>")
	fs.StringVar(&c.Pod, "pod", c.Pod, "this replica's pod name (default $POD_NAME)")
	fs.StringVar(&c.XDSAddr, "xds-addr", c.XDSAddr, "istiod-lite's xDS and CA address")
	fs.StringVar(&c.ServerName, "xds-server-name", c.ServerName, "the name istiod-lite's certificate is checked for")
	fs.StringVar(&c.RootCertFile, "root-cert", c.RootCertFile, "the CA certificate that verifies istiod-lite")
	fs.StringVar(&c.TokenFile, "token", c.TokenFile, "the waypoint's projected service-account token")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "the mesh's trust domain")
	fs.StringVar(&c.HBONEAddr, "hbone-addr", c.HBONEAddr, "HBONE listen address")
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, "admin listen address (config dump, pprof); keep on localhost")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "Prometheus metrics listen address")
	fs.StringVar(&c.ReadyAddr, "ready-addr", c.ReadyAddr, "readiness listen address")
	fs.DurationVar(&c.Wait, "wait", c.Wait, "how long a handshake waits for the waypoint's certificate")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "how long open tunnels may go on at shutdown")
	fs.StringVar(&c.TracingEndpoint, "tracing-endpoint", c.TracingEndpoint, "OpenTelemetry collector (host:port, OTLP/gRPC) for request spans; empty for none")
	fs.Float64Var(&c.TracingSampling, "tracing-sampling", c.TracingSampling, "percentage of requests without a sampled trace that start one")
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if ns, name, ok := strings.Cut(c.Gateway, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		errs = append(errs, errors.New("gateway must be <namespace>/<name>"))
	}
	for name, v := range map[string]string{"xds-addr": c.XDSAddr, "trust-domain": c.TrustDomain, "xds-server-name": c.ServerName, "hbone-addr": c.HBONEAddr} {
		if v == "" {
			errs = append(errs, errors.New(name+" is required"))
		}
	}
	for name, p := range map[string]string{"root-cert": c.RootCertFile, "token": c.TokenFile} {
		if !filepath.IsAbs(p) {
			errs = append(errs, errors.New(name+" must be an absolute path"))
		}
	}
	if c.TracingSampling < 0 || c.TracingSampling > 100 {
		errs = append(errs, errors.New("tracing-sampling must be a percentage, 0 to 100"))
	}
	if c.TracingEndpoint != "" {
		if _, _, err := net.SplitHostPort(c.TracingEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("tracing-endpoint must be host:port: %w", err))
		}
	}
	if c.Wait <= 0 || c.Drain <= 0 {
		errs = append(errs, errors.New("wait and drain must be positive"))
	}
	return errors.Join(errs...)
}
