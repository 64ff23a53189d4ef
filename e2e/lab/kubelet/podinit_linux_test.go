package kubelet

import (
	"fmt"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets the test binary act as `lab podinit` when re-executed by TestPodInit, and as
// `lab nodeview` when run by TestNodeExec.
func TestMain(m *testing.M) {
	if len(os.Args) > 5 && os.Args[1] == "nodeview" && os.Args[6] == "--" {
		err := EnterNodeView(NodeView{Root: os.Args[3], Cgroup: os.Args[5]}, os.Args[7:], os.Environ())
		fmt.Fprintln(os.Stderr, "nodeview:", err)
		os.Exit(111)
	}
	if enc := os.Getenv(InitEnv); enc != "" {
		spec, err := DecodeInit(enc)
		if err == nil {
			err = PodInit(spec)
		}
		fmt.Fprintln(os.Stderr, "podinit:", err)
		os.Exit(111)
	}
	os.Exit(m.Run())
}

// needRoot skips without root, and fails instead under CI=true, where every test must run.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.SkipOrFail(t, "needs root (mount and network namespaces)")
	}
}

// TestPodInit runs a program the way the kubelet starts containers: in a fresh mount namespace
// with a bind-mounted volume at a path that does not exist on the host, inside a pod network
// namespace, and checks what the program sees and what the host does not.
func TestPodInit(t *testing.T) {
	needRoot(t)
	netns := "ambient-test-podinit-" + fmt.Sprint(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", netns).Run() })

	dir := t.TempDir()
	vol := filepath.Join(dir, "vol")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "token"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "not", "there", "yet")
	created := filepath.Join(dir, "created")
	spec := InitSpec{
		Netns:      "/run/netns/" + netns,
		Mounts:     []Mount{{Source: vol, Target: target, ReadOnly: true}},
		Argv:       []string{"/bin/sh", "-c", "cat " + target + "/token; echo; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; touch " + target + "/x 2>/dev/null || echo read-only"},
		Env:        []string{"PATH=/usr/bin:/bin"},
		CreatedLog: created,
	}
	enc, err := EncodeInit(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{InitEnv + "=" + enc}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("podinit: %v: %s", err, out)
	}
	lines := strings.Fields(string(out))
	want := []string{"secret", "lo", "read-only"}
	if strings.Join(lines, " ") != strings.Join(want, " ") {
		t.Errorf("program saw %q, want %q", lines, want)
	}
	// On the host the target exists (created, empty) but the volume is not mounted there.
	if _, err := os.Stat(filepath.Join(target, "token")); !os.IsNotExist(err) {
		t.Errorf("volume visible on the host at %s: %v", target, err)
	}
	if err := RemoveCreated(created); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "not")); !os.IsNotExist(err) {
		t.Errorf("created mount targets not removed: %v", err)
	}
}
