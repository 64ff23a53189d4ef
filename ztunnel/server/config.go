// Package server composes ztunnel: the xDS client of istiod-lite, the certificates, the
// compiled policies, the in-pod listeners fed by the node agent over ZDS, the proxy, and the
// admin, metrics and readiness endpoints. It is the only place that wires ztunnel's parts
// together and holds no protocol or policy logic itself.
package server

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/redirect"
)

// Config is everything ztunnel needs.
type Config struct {
	Node string
	// XDSAddr is istiod-lite's TLS gRPC address (xDS and CA).
	XDSAddr    string
	ServerName string
	// RootCertFile verifies istiod-lite (the istio-ca-root-cert ConfigMap).
	RootCertFile string
	// TokenFile is ztunnel's projected service-account token.
	TokenFile   string
	TrustDomain string
	PinDir      string
	ZDSSocket   string
	AdminAddr   string
	MetricsAddr string
	ReadyAddr   string
	// Wait bounds how long a connection waits for its pod's configuration and certificate.
	Wait time.Duration
	// Drain bounds how long open connections may go on after SIGTERM or a pod's removal.
	Drain time.Duration
	// AccessLog gets the access log lines, JSON like the log's, one Write a line from many
	// goroutines at once: it must be safe for concurrent use, as internal/logwriter and
	// os.Stdout are (not a flag; nil: stdout, a write per line).
	AccessLog io.Writer
}

// Default returns the configuration of a standard installation.
func Default() Config {
	return Config{
		Node:         os.Getenv("NODE_NAME"),
		XDSAddr:      "istiod-lite.istio-system.svc:" + strconv.Itoa(mesh.PortXDSTLS),
		ServerName:   "istiod-lite.istio-system.svc",
		RootCertFile: "/var/run/secrets/istio/root-cert.pem",
		TokenFile:    "/var/run/secrets/tokens/istio-token",
		TrustDomain:  "cluster.local",
		PinDir:       redirect.DefaultPinDir,
		ZDSSocket:    "/var/run/ambient/ztunnel.sock",
		AdminAddr:    "127.0.0.1:" + strconv.Itoa(mesh.PortAdmin),
		MetricsAddr:  ":" + strconv.Itoa(mesh.PortMetrics),
		ReadyAddr:    ":" + strconv.Itoa(mesh.PortReadiness),
		Wait:         5 * time.Second,
		Drain:        30 * time.Second,
	}
}

// RegisterFlags binds the configuration to flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Node, "node", c.Node, "this node's name (default $NODE_NAME)")
	fs.StringVar(&c.XDSAddr, "xds-addr", c.XDSAddr, "istiod-lite's xDS and CA address")
	fs.StringVar(&c.ServerName, "xds-server-name", c.ServerName, "the name istiod-lite's certificate is checked for")
	fs.StringVar(&c.RootCertFile, "root-cert", c.RootCertFile, "the CA certificate that verifies istiod-lite")
	fs.StringVar(&c.TokenFile, "token", c.TokenFile, "ztunnel's projected service-account token")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "the mesh's trust domain")
	fs.StringVar(&c.PinDir, "pin-dir", c.PinDir, "the redirector's pin directory")
	fs.StringVar(&c.ZDSSocket, "zds-socket", c.ZDSSocket, "the node agent's ZDS socket")
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, "admin listen address (config dump, pprof); keep on localhost")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "Prometheus metrics listen address")
	fs.StringVar(&c.ReadyAddr, "ready-addr", c.ReadyAddr, "readiness listen address")
	fs.DurationVar(&c.Wait, "wait", c.Wait, "how long a connection waits for its pod's configuration and certificate")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "how long open connections may go on at shutdown")
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node name is required (--node or NODE_NAME)"))
	}
	for name, v := range map[string]string{"xds-addr": c.XDSAddr, "trust-domain": c.TrustDomain, "xds-server-name": c.ServerName} {
		if v == "" {
			errs = append(errs, errors.New(name+" is required"))
		}
	}
	for name, p := range map[string]string{"root-cert": c.RootCertFile, "token": c.TokenFile, "pin-dir": c.PinDir, "zds-socket": c.ZDSSocket} {
		if !filepath.IsAbs(p) {
			errs = append(errs, errors.New(name+" must be an absolute path"))
		}
	}
	if c.Wait <= 0 || c.Drain <= 0 {
		errs = append(errs, errors.New("wait and drain must be positive"))
	}
	return errors.Join(errs...)
}
