// Package kubelet is the lab's kubelet: it registers a node, keeps it alive with a Lease, and
// runs the pods bound to it as processes, each in its own network, mount and cgroup namespace,
// networked by the node's CNI configuration exactly as a real kubelet would invoke it. It is
// test infrastructure: it has no image store and maps container images to programs built from
// this repository.
package kubelet

import (
	"errors"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Config configures a lab kubelet.
type Config struct {
	Root       string // repository root (marks the lab's processes)
	Node       string
	NodeIP     string
	PodCIDR    string
	Kubeconfig string
	CNIConfDir string // the node's /etc/cni/net.d on the host (under NodeRoot)
	CNIBinDir  string // the node's /opt/cni/bin on the host (under NodeRoot)
	// NodeRoot is the directory that plays the node's root file system: hostPath volumes resolve
	// under it, and CNI plugins run with its /etc/cni/net.d, /opt/cni/bin and /run in place.
	NodeRoot string
	// NodeCgroup is the node's cgroup v2 directory: the parent of its pods' cgroups, and what
	// the node's pods and plugins see at /sys/fs/cgroup.
	NodeCgroup string
	StateDir   string // per-node state: pods' volumes and logs
	CreatedLog string // where pods record mount targets they created on the host
	BinDir     string // colon-separated directories of the programs that images map to
	ClusterDNS string
	Domain     string
	APIHost    string // KUBERNETES_SERVICE_HOST given to pods
	APIPort    string
	// TLSCertFile and TLSKeyFile are the kubelet API's serving certificate, ClientCAFile the CA
	// of the client certificates it accepts; the API is served on NodeIP:ServerPort (0: 10250)
	// when TLSCertFile is set (server_linux.go).
	TLSCertFile, TLSKeyFile, ClientCAFile string
	ServerPort                            int
	// TokenMaxAge is the age at which a projected service-account token is refreshed whatever
	// its lifetime (0: DefaultTokenMaxAge); see tokens.go.
	TokenMaxAge time.Duration
}

// Validate reports every problem with the config.
func (c Config) Validate() error {
	var errs []error
	for name, v := range map[string]string{"node": c.Node, "kubeconfig": c.Kubeconfig, "cni-conf-dir": c.CNIConfDir,
		"cni-bin-dir": c.CNIBinDir, "state-dir": c.StateDir, "bin-dir": c.BinDir, "node-root": c.NodeRoot,
		"node-cgroup": c.NodeCgroup} {
		if v == "" {
			errs = append(errs, errors.New(name+" is required"))
		}
	}
	if net.ParseIP(c.NodeIP) == nil {
		errs = append(errs, errors.New("node-ip must be an IP address"))
	}
	if _, _, err := net.ParseCIDR(c.PodCIDR); err != nil {
		errs = append(errs, errors.New("pod-cidr must be a CIDR"))
	}
	if c.TLSCertFile != "" && (c.TLSKeyFile == "" || c.ClientCAFile == "") {
		errs = append(errs, errors.New("tls-cert-file needs tls-private-key-file and client-ca-file"))
	}
	for name, v := range map[string]string{"node-root": c.NodeRoot, "node-cgroup": c.NodeCgroup} {
		if v != "" && !filepath.IsAbs(v) {
			errs = append(errs, errors.New(name+" must be an absolute path"))
		}
	}
	return errors.Join(errs...)
}

// ImageProgram maps a container image to the program that plays it: the last path element of
// the image name without tag or digest (ambient/echo:latest → <bin>/echo).
func ImageProgram(binDir, image string) (string, error) {
	name := image
	if i := strings.IndexAny(name, "@"); i >= 0 {
		name = name[:i]
	}
	name = path.Base(name)
	if i := strings.LastIndex(name, ":"); i >= 0 {
		name = name[:i]
	}
	if name == "" || name == "." || name == "/" || strings.Contains(image, "..") {
		return "", errors.New("image " + image + ": no program name")
	}
	return filepath.Join(binDir, name), nil
}

// findProgram resolves image in the first directory of the colon-separated list that has it.
// The mesh's images drop the binaries' "ambient-" prefix (ambient/agent runs ambient-agent), so
// a name that is not found as it is is tried with the prefix.
func findProgram(dirs, image string) (string, error) {
	var first string
	for _, d := range filepath.SplitList(dirs) {
		p, err := ImageProgram(d, image)
		if err != nil {
			return "", err
		}
		if first == "" {
			first = p
		}
		for _, cand := range []string{p, filepath.Join(filepath.Dir(p), "ambient-"+filepath.Base(p))} {
			if st, err := os.Stat(cand); err == nil && !st.IsDir() {
				return cand, nil
			}
		}
	}
	return "", errors.New("image " + image + ": no program " + filepath.Base(first) + " in " + dirs)
}
