package kubelet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The kernel's file systems that every lab node shares with the host, as every container on a
// real node shares them with its node: a hostPath at or below one of these is the host's own.
// /sys/fs/cgroup and /sys/fs/bpf are the exceptions; hostPathSource gives each node its own.
var hostKernelPaths = []string{"/proc", "/sys", "/dev", "/run/netns"}

// hostPathSource returns the host path that plays path (a hostPath volume's path) on a node
// whose root file system is nodeRoot and whose cgroup v2 directory is nodeCgroup:
//
//   - /sys/fs/cgroup/...  → nodeCgroup/...  (the node's subtree, so cgroup programs attached at
//     /sys/fs/cgroup see that node's pods only)
//   - /sys/fs/bpf/...     → nodeRoot/sys/fs/bpf/... (the node's own bpffs instance)
//   - /proc, /sys, /dev, /run/netns and below → the host's (one kernel; pods' network namespaces
//     are named in /run/netns on the host)
//   - anything else       → nodeRoot/path
//
// /var/run is /run, as on every current distribution (the node root has the same symlink).
func hostPathSource(nodeRoot, nodeCgroup, p string) string {
	p = path.Clean("/" + p)
	if rest, ok := under(p, "/var/run"); ok {
		p = "/run" + rest
	}
	if rest, ok := under(p, "/sys/fs/cgroup"); ok {
		return nodeCgroup + rest
	}
	if _, ok := under(p, "/sys/fs/bpf"); ok {
		return filepath.Join(nodeRoot, p)
	}
	for _, k := range hostKernelPaths {
		if _, ok := under(p, k); ok {
			return p
		}
	}
	return filepath.Join(nodeRoot, p)
}

// under reports whether p is dir or below it, and returns the rest ("" or "/...").
func under(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	if strings.HasPrefix(p, dir+"/") {
		return p[len(dir):], true
	}
	return "", false
}

// prepareHostPath resolves a hostPath volume for the node and applies its type as a kubelet
// does: the *OrCreate types create what is missing (under the node root), the others require
// it to exist with the right type. An unset type creates a missing directory, as container
// runtimes do for a bind-mount source.
func prepareHostPath(nodeRoot, nodeCgroup string, hp *corev1.HostPathVolumeSource) (string, error) {
	src := hostPathSource(nodeRoot, nodeCgroup, hp.Path)
	t := corev1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	st, err := os.Stat(src)
	missing := errors.Is(err, fs.ErrNotExist)
	if err != nil && !missing {
		return "", fmt.Errorf("hostPath %s: %w", hp.Path, err)
	}
	switch t {
	case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate:
		if missing {
			return src, os.MkdirAll(src, 0o755)
		}
		if t == corev1.HostPathDirectoryOrCreate && !st.IsDir() {
			return "", fmt.Errorf("hostPath %s (%s on this node) exists and is not a directory", hp.Path, src)
		}
	case corev1.HostPathFileOrCreate:
		if missing {
			if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
				return "", err
			}
			f, err := os.OpenFile(src, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return "", err
			}
			return src, f.Close()
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("hostPath %s (%s on this node) exists and is not a file", hp.Path, src)
		}
	default:
		want := map[corev1.HostPathType]fs.FileMode{
			corev1.HostPathDirectory: fs.ModeDir, corev1.HostPathFile: 0, corev1.HostPathSocket: fs.ModeSocket,
			corev1.HostPathCharDev: fs.ModeDevice | fs.ModeCharDevice, corev1.HostPathBlockDev: fs.ModeDevice,
		}
		m, ok := want[t]
		if !ok {
			return "", fmt.Errorf("hostPath %s: unknown type %q", hp.Path, t)
		}
		if missing {
			return "", fmt.Errorf("hostPath %s: type %s requires it to exist, and %s does not on this node", hp.Path, t, src)
		}
		if st.Mode().Type() != m {
			return "", fmt.Errorf("hostPath %s (%s on this node) is not a %s", hp.Path, src, t)
		}
	}
	return src, nil
}
