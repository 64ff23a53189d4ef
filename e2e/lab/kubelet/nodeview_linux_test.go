package kubelet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// TestNodeExec runs a fake CNI plugin the way the kubelet runs the node's plugins and checks that
// it sees the node's files at the standard paths, and that its errors map as libcni's own do.
func TestNodeExec(t *testing.T) {
	needRoot(t)
	root, cg := t.TempDir(), t.TempDir()
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin", "run/ambient", "run/netns", "sys/fs/bpf"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../run", filepath.Join(root, "var")); err != nil { // var → run is enough here
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", filepath.Join(root, "sys/fs/bpf"), "bpf", 0, ""); err != nil {
		t.Skipf("no bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(filepath.Join(root, "sys/fs/bpf"), unix.MNT_DETACH) })
	if err := os.Mkdir(filepath.Join(root, "sys/fs/bpf/pins"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(cg, "pod-x"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/cni/net.d/ambient-cni.kubeconfig": "node kubeconfig\n",
		"run/ambient/cni.sock":                 "node socket\n",
		"opt/cni/bin/fake": `#!/bin/sh
test "$CNI_COMMAND" = ADD || { echo '{"code":7,"msg":"boom"}'; exit 1; }
cat /etc/cni/net.d/ambient-cni.kubeconfig /var/run/ambient/cni.sock
ls /sys/fs/bpf | grep pins
ls /sys/fs/cgroup
`,
	}
	for f, s := range files {
		if err := os.WriteFile(filepath.Join(root, f), []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &nodeExec{labBin: self, view: NodeView{Root: root, Cgroup: cg}}
	plugin, err := e.FindInPath("fake", []string{filepath.Join(root, "opt/cni/bin")})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.ExecPlugin(context.Background(), plugin, nil, []string{"CNI_COMMAND=ADD", "PATH=/usr/bin:/bin"})
	if err != nil {
		t.Fatalf("ExecPlugin: %v", err)
	}
	if want := "node kubeconfig\nnode socket\npins\npod-x\n"; string(out) != want {
		t.Errorf("plugin saw %q, want %q", out, want)
	}
	_, err = e.ExecPlugin(context.Background(), plugin, nil, []string{"CNI_COMMAND=DEL", "PATH=/usr/bin:/bin"})
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != 7 || cniErr.Msg != "boom" {
		t.Errorf("failing plugin: err %v, want CNI error 7 boom", err)
	}
	// Nothing of the view reached this (the host's) mount namespace.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " /etc ") || strings.Contains(string(b), " /opt ") {
		t.Errorf("nodeview mounts leaked into the caller's namespace")
	}
}
