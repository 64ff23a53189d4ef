package kubelet

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func TestHostPathSource(t *testing.T) {
	const root, cg = "/lab/nodes/node-1/root", "/sys/fs/cgroup/unified/ambient-lab/node-1"
	tests := []struct{ path, want string }{
		{"/var/run/ambient", root + "/run/ambient"},
		{"/run/ambient/cni.sock", root + "/run/ambient/cni.sock"},
		{"/etc/cni/net.d", root + "/etc/cni/net.d"},
		{"/opt/cni/bin/", root + "/opt/cni/bin"},
		{"/", root},
		{"relative/x", root + "/relative/x"},
		{"/etc/../../proc", "/proc"},
		{"/sys/fs/cgroup", cg},
		{"/sys/fs/cgroup/kubepods", cg + "/kubepods"},
		{"/sys/fs/cgroupx", "/sys/fs/cgroupx"},
		{"/sys/fs/bpf", root + "/sys/fs/bpf"},
		{"/sys/fs/bpf/ambient", root + "/sys/fs/bpf/ambient"},
		{"/sys/kernel", "/sys/kernel"},
		{"/proc", "/proc"},
		{"/proc/1/ns/net", "/proc/1/ns/net"},
		{"/procx", root + "/procx"},
		{"/dev/null", "/dev/null"},
		{"/run/netns", "/run/netns"},
		{"/var/run/netns/ambient-pod-x", "/run/netns/ambient-pod-x"},
		{"/run/netnsx", root + "/run/netnsx"},
	}
	got, want := map[string]string{}, map[string]string{}
	for _, tt := range tests {
		got[tt.path] = hostPathSource(root, cg, tt.path)
		want[tt.path] = tt.want
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("hostPathSource (-want +got):\n%s", d)
	}
}

func TestPrepareHostPath(t *testing.T) {
	root := t.TempDir()
	cg := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	typ := func(t corev1.HostPathType) *corev1.HostPathType { return &t }
	tests := []struct {
		path    string
		typ     *corev1.HostPathType
		want    string // the source, relative to root; empty when an error is expected
		wantErr string
		isDir   bool
	}{
		{path: "/var/run/new", want: "run/new", isDir: true},
		{path: "/made/here", typ: typ(corev1.HostPathDirectoryOrCreate), want: "made/here", isDir: true},
		{path: "/etc/file", typ: typ(corev1.HostPathDirectoryOrCreate), wantErr: "not a directory"},
		{path: "/etc/new/file", typ: typ(corev1.HostPathFileOrCreate), want: "etc/new/file"},
		{path: "/etc/file", typ: typ(corev1.HostPathFile), want: "etc/file"},
		{path: "/etc/dir", typ: typ(corev1.HostPathDirectory), want: "etc/dir", isDir: true},
		{path: "/etc/dir", typ: typ(corev1.HostPathFile), wantErr: "is not a File"},
		{path: "/sock", typ: typ(corev1.HostPathSocket), want: "sock"},
		{path: "/var/run/ambient/cni.sock", typ: typ(corev1.HostPathSocket), wantErr: "requires it to exist"},
		{path: "/nope", typ: typ(corev1.HostPathDirectory), wantErr: "requires it to exist"},
	}
	for _, tt := range tests {
		got, err := prepareHostPath(root, cg, &corev1.HostPathVolumeSource{Path: tt.path, Type: tt.typ})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s %v: err %v, want %q", tt.path, tt.typ, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != filepath.Join(root, tt.want) {
			t.Errorf("%s: got %q, %v; want %q", tt.path, got, err, filepath.Join(root, tt.want))
			continue
		}
		if st, err := os.Stat(got); err != nil || st.IsDir() != tt.isDir {
			t.Errorf("%s: %s after prepare: %v (dir %v)", tt.path, got, err, tt.isDir)
		}
	}
}
