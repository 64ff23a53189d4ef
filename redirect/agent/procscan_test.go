package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestPodUIDs(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"lab", "0::/ambient-lab/node-1/0f3c2a4e-1b2c-4d5e-8f90-123456789abc\n", []string{"0f3c2a4e-1b2c-4d5e-8f90-123456789abc"}},
		{"cgroupfs driver", "0::/kubepods/besteffort/pod0f3c2a4e-1b2c-4d5e-8f90-123456789abc/4f6e\n", []string{"0f3c2a4e-1b2c-4d5e-8f90-123456789abc"}},
		{"systemd driver", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c2a4e_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-abc.scope\n",
			[]string{"0f3c2a4e-1b2c-4d5e-8f90-123456789abc"}},
		{"v1 lines ignored", "12:memory:/kubepods/pod0f3c2a4e-1b2c-4d5e-8f90-123456789abc\n0::/\n", nil},
		{"not a pod", "0::/system.slice/sshd.service\n", nil},
		{"upper case is not a UID", "0::/x/0F3C2A4E-1B2C-4D5E-8F90-123456789ABC\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, podUIDs([]byte(tc.file))); diff != "" {
				t.Errorf("podUIDs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProcIndex builds a fake /proc: a pod process whose ns/net is a file of its own, and
// checks the lookup, the rescan on a miss and its rate limit.
func TestProcIndex(t *testing.T) {
	dir := t.TempDir()
	mk := func(pid, cgroup string) {
		if err := os.MkdirAll(filepath.Join(dir, pid, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pid, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pid, "ns", "net"), []byte(pid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("self", "0::/\n")
	mk("10", "0::/ambient-lab/node-1/aaaaaaaa-1b2c-4d5e-8f90-123456789abc\n")
	now := time.Unix(1000, 0)
	idx := newProcIndex(dir, func() time.Time { return now })
	got, err := idx.netnsPath("aaaaaaaa-1b2c-4d5e-8f90-123456789abc")
	if err != nil || got != filepath.Join(dir, "10", "ns", "net") {
		t.Fatalf("netnsPath = %q, %v", got, err)
	}
	mk("11", "0::/ambient-lab/node-1/bbbbbbbb-1b2c-4d5e-8f90-123456789abc\n")
	if _, err := idx.netnsPath("bbbbbbbb-1b2c-4d5e-8f90-123456789abc"); err == nil {
		t.Fatal("found a pod started after the last scan without waiting minAge")
	}
	now = now.Add(time.Second)
	if got, err := idx.netnsPath("bbbbbbbb-1b2c-4d5e-8f90-123456789abc"); err != nil || got != filepath.Join(dir, "11", "ns", "net") {
		t.Fatalf("after minAge: netnsPath = %q, %v", got, err)
	}
}
