package kubelet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"
)

// NodeView is the node's file system as its privileged pods see it through hostPath (see
// hostPathSource), for programs the node itself runs: the CNI plugins.
type NodeView struct {
	Root   string // the node root
	Cgroup string // the node's cgroup v2 directory
}

// viewMount is one mount EnterNodeView makes, in order.
type viewMount struct {
	source, target, fstype, data string
}

// mounts lists what EnterNodeView mounts. /etc and /opt become the host's with the node root's
// files on top (a read-only overlay, so that nothing is created on the host for a target), and
// then /etc/cni/net.d and /opt/cni/bin are the node's alone, as on a node whose runtime reads
// only its own CNI configuration. /run is the node's, with the host's /run/netns bound into it
// first: pods' network namespaces are named there. /sys/fs/bpf and /sys/fs/cgroup are the
// node's bpffs and cgroup subtree.
func (v NodeView) mounts() []viewMount {
	var ms []viewMount
	for _, top := range []string{"etc", "opt"} {
		ms = append(ms, viewMount{fstype: "overlay", target: "/" + top,
			data: "lowerdir=" + filepath.Join(v.Root, top) + ":/" + top})
	}
	ms = append(ms,
		viewMount{source: filepath.Join(v.Root, "etc/cni/net.d"), target: "/etc/cni/net.d"},
		viewMount{source: filepath.Join(v.Root, "opt/cni/bin"), target: "/opt/cni/bin"},
		viewMount{source: "/run/netns", target: filepath.Join(v.Root, "run/netns")},
		viewMount{source: filepath.Join(v.Root, "run"), target: "/run"},
		viewMount{source: filepath.Join(v.Root, "sys/fs/bpf"), target: "/sys/fs/bpf"},
		viewMount{source: v.Cgroup, target: "/sys/fs/cgroup"},
	)
	return ms
}

// EnterNodeView makes the node's view in the current mount namespace, which must be a private
// one (`lab nodeview` is cloned with CLONE_NEWNS), and execs argv with env. It returns only on
// failure.
func EnterNodeView(v NodeView, argv, env []string) error {
	if len(argv) == 0 {
		return errors.New("nodeview: no program")
	}
	// Slave, not private: the host's later mounts (a new pod's netns) still arrive; ours stay here.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("nodeview: make mounts slave: %w", err)
	}
	for _, m := range v.mounts() {
		var err error
		if m.fstype != "" {
			err = unix.Mount(m.fstype, m.target, m.fstype, unix.MS_RDONLY, m.data)
		} else if _, serr := os.Stat(m.source); serr != nil {
			continue // the host has no /run/netns yet, say: nothing to show
		} else {
			err = unix.Mount(m.source, m.target, "", unix.MS_BIND|unix.MS_REC, "")
		}
		if err != nil {
			return fmt.Errorf("nodeview: mount %s on %s: %w", m.source+m.data, m.target, err)
		}
	}
	prog, err := exec.LookPath(argv[0]) // in the view: /opt/cni/bin is the node's now
	if err != nil {
		return fmt.Errorf("nodeview: %w", err)
	}
	return unix.Exec(prog, argv, env)
}

// NodeViewArgs is the command line of `lab nodeview` for v running argv.
func NodeViewArgs(v NodeView, argv ...string) []string {
	return append([]string{"nodeview", "--root", v.Root, "--cgroup", v.Cgroup, "--"}, argv...)
}

// nodeExec runs CNI plugins through `lab nodeview`, so that a plugin sees the node's files
// where the node's pods put them (a socket under /var/run, a kubeconfig in /etc/cni/net.d).
// It implements libcni's invoke.Exec.
type nodeExec struct {
	version.PluginDecoder
	labBin string
	view   NodeView
}

var _ invoke.Exec = (*nodeExec)(nil)

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// ExecPlugin runs pluginPath (found in the node root's opt/cni/bin) as /opt/cni/bin/<name> in
// the node's view, and maps failures as libcni's RawExec does.
func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	if rel, err := filepath.Rel(e.view.Root, pluginPath); err == nil && !strings.HasPrefix(rel, "..") {
		pluginPath = "/" + rel
	}
	for attempt := 0; ; attempt++ {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, e.labBin, NodeViewArgs(e.view, pluginPath)...)
		cmd.Env = environ
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
		// Cloneflags rather than Unshareflags: Go would make every mount private after unsharing,
		// and nodeview wants them slave.
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
		err := cmd.Run()
		if err == nil {
			return stdout.Bytes(), nil
		}
		// A plugin being installed right now (the agent copying it in) fails with ETXTBSY; RawExec
		// retries those too.
		if attempt < 5 && strings.Contains(stderr.String(), "text file busy") {
			time.Sleep(time.Second)
			continue
		}
		return nil, pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
}

// pluginErr is RawExec's: the plugin's error JSON on stdout, else its stderr.
func pluginErr(err error, stdout, stderr []byte) error {
	emsg := types.Error{}
	switch {
	case len(stdout) == 0 && len(stderr) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	case len(stdout) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed: %q: %v", string(stderr), err)
	default:
		if perr := json.Unmarshal(stdout, &emsg); perr != nil {
			emsg.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", string(stdout), perr)
		}
	}
	return &emsg
}
