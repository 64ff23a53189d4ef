package agent

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/cni"
)

// Config is everything the node agent needs. Paths are the node's, as the DaemonSet mounts them.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster.
	Kubeconfig string
	// Node is the node the agent runs on (NODE_NAME from the downward API).
	Node string
	// Namespace and PodName identify the agent's own pod: on exit the agent uninstalls when
	// its DaemonSet is being deleted.
	Namespace, PodName string

	Redirect redirect.Config
	// ProcDir is the host's /proc (the agent runs with hostPID).
	ProcDir string
	// RunDir is shared with ztunnel and the CNI plugin: ZDS socket and CNI socket.
	RunDir string

	// InstallCNI chains the plugin into the node's CNI configuration.
	InstallCNI bool
	CNIConfDir string
	CNIBinDir  string
	// CNIBinary is the plugin binary to install (shipped beside the agent's).
	CNIBinary string

	MetricsAddr string
	ReadyAddr   string
	// AckTimeout bounds the wait for ztunnel's answer to one workload.
	AckTimeout time.Duration
	// Workers reconcile pods in parallel (one pod never twice at once).
	Workers int
	// Resync re-checks every pod of the node this often, so that a failure that left no event
	// behind is retried.
	Resync time.Duration
}

// ZDSSocket is where ztunnel connects.
func (c Config) ZDSSocket() string { return filepath.Join(c.RunDir, "ztunnel.sock") }

// CNISocket is where the CNI plugin asks the agent.
func (c Config) CNISocket() string { return filepath.Join(c.RunDir, "cni.sock") }

// Default returns the configuration of a standard installation.
func Default() Config {
	cniBin := "/usr/local/bin/ambient-cni"
	if exe, err := os.Executable(); err == nil {
		cniBin = filepath.Join(filepath.Dir(exe), cni.PluginType)
	}
	return Config{
		Node:        os.Getenv("NODE_NAME"),
		Namespace:   os.Getenv("POD_NAMESPACE"),
		PodName:     os.Getenv("POD_NAME"),
		Redirect:    redirect.Default(),
		ProcDir:     "/proc",
		RunDir:      "/var/run/ambient",
		InstallCNI:  true,
		CNIConfDir:  "/etc/cni/net.d",
		CNIBinDir:   "/opt/cni/bin",
		CNIBinary:   cniBin,
		MetricsAddr: ":" + strconv.Itoa(mesh.PortMetrics),
		ReadyAddr:   ":" + strconv.Itoa(mesh.PortReadiness),
		AckTimeout:  10 * time.Second,
		Workers:     8,
		Resync:      time.Minute,
	}
}

// RegisterFlags binds the configuration to flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig path (empty: in-cluster)")
	fs.StringVar(&c.Node, "node", c.Node, "this node's name (default $NODE_NAME)")
	fs.StringVar(&c.Redirect.PinDir, "pin-dir", c.Redirect.PinDir, "bpffs directory for the pinned maps and links")
	fs.StringVar(&c.Redirect.Cgroup, "cgroup", c.Redirect.Cgroup, "cgroup v2 directory the connect hooks attach to")
	fs.StringVar(&c.ProcDir, "proc", c.ProcDir, "the host's /proc")
	fs.StringVar(&c.RunDir, "run-dir", c.RunDir, "directory of the ZDS and CNI sockets, shared with ztunnel and the CNI plugin")
	fs.BoolVar(&c.InstallCNI, "install-cni", c.InstallCNI, "chain the CNI plugin into the node's configuration")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", c.CNIConfDir, "the node's CNI configuration directory")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", c.CNIBinDir, "the node's CNI plugin directory")
	fs.StringVar(&c.CNIBinary, "cni-binary", c.CNIBinary, "the CNI plugin binary to install")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "Prometheus metrics listen address")
	fs.StringVar(&c.ReadyAddr, "ready-addr", c.ReadyAddr, "readiness listen address")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", c.AckTimeout, "how long to wait for ztunnel to take a workload")
	fs.IntVar(&c.Workers, "workers", c.Workers, "pods reconciled in parallel")
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	errs := []error{c.Redirect.Validate()}
	if c.Node == "" {
		errs = append(errs, errors.New("node name is required (--node or NODE_NAME)"))
	}
	for name, p := range map[string]string{"proc": c.ProcDir, "run-dir": c.RunDir, "cni-conf-dir": c.CNIConfDir, "cni-bin-dir": c.CNIBinDir} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q is not an absolute path", name, p))
		}
	}
	if c.InstallCNI && c.CNIBinary == "" {
		errs = append(errs, errors.New("cni-binary is required to install the CNI plugin"))
	}
	if c.AckTimeout <= 0 {
		errs = append(errs, errors.New("ack-timeout must be positive"))
	}
	if c.Workers < 1 {
		errs = append(errs, errors.New("workers must be at least 1"))
	}
	if c.Resync <= 0 {
		errs = append(errs, errors.New("resync must be positive"))
	}
	return errors.Join(errs...)
}
