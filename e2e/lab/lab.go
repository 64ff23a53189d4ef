// Package lab runs the project's test cluster: a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler built from pinned modules) whose nodes
// are network namespaces on a lab bridge, each with a lab kubelet that runs pods as processes.
//
// The lab never changes the host's existing interfaces, routes or firewall. It creates a switch
// network namespace holding the lab bridge and the control plane, one namespace per node and per
// pod, and a single host-side veth on the lab subnet so the host reaches the API server. Everything
// it creates carries the lab's names, so Down finds and removes it, also after a crash.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Names and addresses of the lab network. The lab subnet carries node and control-plane
// addresses; each node gets its own pod CIDR; Services come from their own range.
const (
	SwitchNetns   = "ambient-lab"
	NodeNetnsPref = "ambient-node-"
	PodNetnsPref  = "ambient-pod-"
	BridgeName    = "lab0"
	HostVeth      = "ambient-lab0"
	SwitchUplink  = "uplink0"
	LabSubnet     = "10.233.0.0/24"
	APIServerIP   = "10.233.0.1"
	HostIP        = "10.233.0.254"
	ServiceCIDR   = "10.235.0.0/16"
	PodCIDRs      = "10.234.0.0/16" // node i has 10.234.i.0/24
	ClusterDNSIP  = "10.235.0.10"
	APIPort       = 6443
	CgroupParent  = "ambient-lab"
	// EnvMarker is set in the environment of every process the lab starts, so that Down can
	// find exactly those processes (and no others) after a crash.
	EnvMarker = "AMBIENT_LAB_ROOT"
)

// Config describes a lab.
type Config struct {
	Root     string // repository root; state lives in Root/.lab
	Nodes    int    // number of nodes
	ToolsDir string // directory with bin/ and cni/ from e2e/tools/build.sh
	BinDir   string // the repository's bin/ (lab, echo, client, mesh components)
	// TokenMaxAge is the age at which the kubelets refresh a projected service-account token
	// whatever its lifetime (0: a kubelet's 24 hours).
	TokenMaxAge time.Duration
}

// Default returns a two-node lab rooted at root.
func Default(root string) Config {
	return Config{Root: root, Nodes: 2, BinDir: filepath.Join(root, "bin")}
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	if c.Root == "" {
		errs = append(errs, errors.New("root is required"))
	}
	if c.Nodes < 1 || c.Nodes > 50 {
		errs = append(errs, fmt.Errorf("nodes must be 1..50, got %d", c.Nodes))
	}
	if c.ToolsDir == "" {
		errs = append(errs, errors.New("tools dir is required (run e2e/tools/build.sh)"))
	}
	return errors.Join(errs...)
}

// StateDir is Root/.lab.
func (c Config) StateDir() string { return filepath.Join(c.Root, ".lab") }

// Kubeconfig is the cluster-admin kubeconfig.
func (c Config) Kubeconfig() string { return filepath.Join(c.StateDir(), "kubeconfig") }

// CreatedLog lists the mount targets pods had to create on the host's file system.
func (c Config) CreatedLog() string { return filepath.Join(c.StateDir(), "created-paths") }

// NodeDir holds a node's state: credentials, its pods' volumes and logs, and its root.
func (c Config) NodeDir(node string) string { return filepath.Join(c.StateDir(), "nodes", node) }

// NodeRoot plays the node's root file system: hostPath volumes of its pods resolve under it
// (/var/run/ambient → NodeRoot/run/ambient), and it holds the node's /etc/cni/net.d,
// /opt/cni/bin and its bpffs at sys/fs/bpf.
func (c Config) NodeRoot(node string) string { return filepath.Join(c.NodeDir(node), "root") }

// LogDir holds one log file per component.
func (c Config) LogDir() string { return filepath.Join(c.StateDir(), "logs") }

// Node describes one lab node.
type Node struct {
	Index   int // 1-based
	Name    string
	Netns   string
	IP      net.IP
	PodCIDR *net.IPNet
	Gateway net.IP // the node's address on its pod bridge
}

// NodeAt returns node i (1-based).
func NodeAt(i int) Node {
	_, cidr, _ := net.ParseCIDR("10.234." + strconv.Itoa(i) + ".0/24")
	return Node{
		Index:   i,
		Name:    "node-" + strconv.Itoa(i),
		Netns:   NodeNetnsPref + strconv.Itoa(i),
		IP:      net.IPv4(10, 233, 0, byte(10+i)).To4(),
		PodCIDR: cidr,
		Gateway: net.IPv4(10, 234, byte(i), 1).To4(),
	}
}

// FindRoot walks up from dir to the directory holding the main go.mod.
func FindRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/ambient-mesh/ambient\n")) {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", errors.New("repository root not found (no go.mod for github.com/ambient-mesh/ambient)")
		}
	}
}
