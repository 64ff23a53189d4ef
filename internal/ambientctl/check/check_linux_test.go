package check

// The check on this machine: the real /proc, /sys, uname and eBPF probes. Rules: it runs as
// root (skipping with the reason otherwise, and failing instead under CI=true, through
// testutil.RequireRoot); it asserts only what a CI node has (kernel 6.x, cgroup v2, BTF, the
// eBPF hooks), not bpffs or a CNI configuration, which a build machine may lack.

import (
	"context"
	"testing"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

func TestDefaultEnv(t *testing.T) {
	testutil.RequireRoot(t)
	results := Run(context.Background(), DefaultEnv())
	must := map[string]bool{"kernel": true, "cgroup2": true, "btf": true, "ebpf": true}
	for _, r := range results {
		t.Logf("%-10s %-4s %s", r.Name, r.Status, r.Detail)
		if must[r.Name] && r.Status != OK {
			t.Errorf("%s: %s: %s (hint: %s)", r.Name, r.Status, r.Detail, r.Hint)
		}
		delete(must, r.Name)
	}
	for name := range must {
		t.Errorf("no %s result", name)
	}
}
