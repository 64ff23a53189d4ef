package redirect

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// TestMarkedAppCaptured: an app that sets the proxies' socket mark itself (it takes only
// CAP_NET_ADMIN) is captured like any other; the mark exempts nothing.
func TestMarkedAppCaptured(t *testing.T) {
	e := newEnv(t)
	e.enrol()
	proxy := e.proxyOutbound()
	remote := e.listen(e.peerNS, ":8080")
	dst := netip.AddrPortFrom(e.peerIP, 8080)

	for _, network := range []string{"tcp4", "tcp6-dual"} {
		t.Run(network, func(t *testing.T) {
			addr := dst.String()
			if network == "tcp6-dual" {
				addr = "[::ffff:" + e.peerIP.String() + "]:8080"
			}
			_, res := e.app(t.Context(), network, addr, mesh.SocketMark)
			e.expectCaptured(t, proxy, dst, res)
			remote.none(t)
		})
	}
}

// TestProxyCgroupExempt: connections from a registered proxy cgroup, or from a cgroup below it,
// go to their destination; once it is forgotten, they are captured again.
func TestProxyCgroupExempt(t *testing.T) {
	e := newEnv(t)
	e.enrol()
	proxy := e.proxyOutbound()
	remote := e.listen(e.peerNS, ":8080")
	dst := netip.AddrPortFrom(e.peerIP, 8080)

	// As on a node: the agent registers the pod cgroup, the proxy runs in a container below it.
	pod := e.subCgroup(t, "ztunnel-pod")
	container := e.subCgroup(t, "ztunnel-pod/ztunnel")
	other := e.subCgroup(t, "app-pod/app")
	id, err := CgroupID(pod)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := e.r.AllowProxyCgroup(id); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := e.r.ProxyCgroups(); err != nil || !cmp.Equal(got, []uint64{id}) {
		t.Fatalf("ProxyCgroups() = %v, %v; want [%d]", got, err, id)
	}

	direct := func(t *testing.T, cg, network, addr string) {
		t.Helper()
		_, res := e.appIn(t.Context(), cg, network, addr, 0)
		remote.accept(t, acceptTimeout).Close()
		if r := waitResult(t, res); r.Err != "" {
			t.Fatalf("app: %s", r.Err)
		}
		proxy.none(t)
	}
	t.Run("pod-cgroup", func(t *testing.T) { direct(t, pod, "tcp4", dst.String()) })
	t.Run("container-cgroup", func(t *testing.T) { direct(t, container, "tcp4", dst.String()) })
	t.Run("container-cgroup-ipv4-mapped", func(t *testing.T) {
		direct(t, container, "tcp6-dual", "[::ffff:"+e.peerIP.String()+"]:8080")
	})
	t.Run("other-pod", func(t *testing.T) {
		_, res := e.appIn(t.Context(), other, "tcp4", dst.String(), 0)
		e.expectCaptured(t, proxy, dst, res)
	})
	t.Run("test-cgroup", func(t *testing.T) { // the parent of the proxy's: not exempt
		_, res := e.app(t.Context(), "tcp4", dst.String(), 0)
		e.expectCaptured(t, proxy, dst, res)
	})

	for range 2 { // forgetting an unknown id is not an error
		if err := e.r.ForgetProxyCgroup(id); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := e.r.ProxyCgroups(); err != nil || len(got) != 0 {
		t.Fatalf("ProxyCgroups() = %v, %v; want none", got, err)
	}
	t.Run("forgotten", func(t *testing.T) {
		_, res := e.appIn(t.Context(), container, "tcp4", dst.String(), 0)
		e.expectCaptured(t, proxy, dst, res)
		remote.none(t)
	})
}

// expectCaptured checks that the app's connection reached the proxy with dst as its original
// destination.
func (e *env) expectCaptured(t *testing.T, proxy *server, dst netip.AddrPort, res <-chan appResult) {
	t.Helper()
	c := proxy.accept(t, acceptTimeout)
	orig, err := e.r.LookupOrigDst(addrPortOf(c.RemoteAddr()))
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if orig != dst {
		t.Errorf("orig dst = %v, want %v", orig, dst)
	}
	c.Close()
	if r := waitResult(t, res); r.Err != "" {
		t.Fatalf("app: %s", r.Err)
	}
}

func TestAllowProxyCgroupZero(t *testing.T) {
	e := newEnv(t)
	if err := e.r.AllowProxyCgroup(0); err == nil {
		t.Error("AllowProxyCgroup(0) succeeded")
	}
}

// TestCgroupID: the id is the kernfs node id, which the kernel also reports as the inode number
// (ino_t has 64 bits here), and CgroupOfPID finds the cgroup a process was started in.
func TestCgroupID(t *testing.T) {
	e := newEnv(t)
	cg := e.subCgroup(t, "a/b")
	id, err := CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(cg, &st); err != nil {
		t.Fatal(err)
	}
	if id != st.Ino {
		t.Errorf("CgroupID = %d, inode %d", id, st.Ino)
	}
	if _, err := CgroupID(t.TempDir()); err == nil {
		t.Error("CgroupID of a directory not on cgroup2 succeeded")
	}

	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.CommandContext(context.Background(), "sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	root, err := FindCgroup2()
	if err != nil {
		t.Fatal(err)
	}
	got, err := CgroupOfPID(root, cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if got != cg {
		t.Errorf("CgroupOfPID = %s, want %s", got, cg)
	}
	// As in the lab, with the test cgroup as the mount: the path from /proc is longer.
	if got, err := CgroupOfPID(e.cgroup, cmd.Process.Pid); err != nil || got != filepath.Join(e.cgroup, "a/b") {
		t.Errorf("CgroupOfPID under the test cgroup = %s, %v; want %s", got, err, cg)
	}
}

func TestCgroupOfPIDParse(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"kubepods/burstable/pod1/ctr", "ctr", "x/y"} {
		if err := os.MkdirAll(filepath.Join(root, "cg", d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cgRoot := filepath.Join(root, "cg")
	const hybrid = "12:cpuset:/kubepods/burstable/pod1/ctr\n1:name=systemd:/kubepods/burstable/pod1/ctr\n"
	for _, tc := range []struct {
		name, file, want string // want "" for an error
	}{
		{"exact", "0::/kubepods/burstable/pod1/ctr\n", "kubepods/burstable/pod1/ctr"},
		{"hybrid", hybrid + "0::/kubepods/burstable/pod1/ctr\n", "kubepods/burstable/pod1/ctr"},
		{"subtree-mount", "0::/system.slice/node-1.scope/kubepods/burstable/pod1/ctr\n", "kubepods/burstable/pod1/ctr"},
		// The longest suffix wins over the shorter "ctr" that also exists.
		{"longest", "0::/node/burstable/pod1/ctr\n", "ctr"},
		{"outside-namespace", "0::/../../x/y\n", "x/y"},
		{"dot-dot-only", "0::/../..\n", ""},
		{"root", "0::/\n", "."},
		{"none-exists", "0::/a/b/c\n", ""},
		{"no-v2-line", hybrid, ""},
		{"relative", "0::kubepods\n", ""},
		{"no-newline", "0::/x/y", "x/y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := filepath.Join(t.TempDir(), "42")
			if err := os.Mkdir(proc, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(proc, "cgroup"), []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := cgroupOfPID(filepath.Dir(proc), cgRoot, 42)
			if tc.want == "" {
				if err == nil {
					t.Errorf("got %s, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(cgRoot, tc.want); got != want {
				t.Errorf("got %s, want %s", got, want)
			}
		})
	}
	if _, err := cgroupOfPID(root, cgRoot, 7); err == nil {
		t.Error("no such pid: no error")
	}
}
