package kubelet

// Container resource limits, as a container runtime applies them: a container with
// resources.limits.memory runs in a memory cgroup of its own with that limit, and an exit by
// SIGKILL after which that cgroup counts a new OOM kill is reported as OOMKilled; a container with
// resources.limits.cpu runs in a cpu cgroup of its own with the CFS quota of that many cores per
// 100 ms period.
//
// The lab's pod cgroups live in the unified (v2) hierarchy, where the pods' processes are placed
// at clone time. The memory and cpu controllers are taken from their cgroup v1 hierarchies,
// mirrored at the same relative path (<v1 mount>/<lab>/<node>/<pod UID>/<container>): on hybrid
// hosts, such as the machines the lab runs on, the unified hierarchy carries no controllers and
// they are bound to v1. A container joins its cgroups itself, in `lab podinit`, before it executes
// the program, so nothing it does escapes the limits. On a host without a v1 hierarchy for a
// controller its limits are not enforced, and the kubelet says so once at start.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-mesh/ambient/redirect"
)

// CgroupV1 returns the directory in the cgroup v1 hierarchy of controller ("memory", "cpu") that
// mirrors the cgroup v2 directory dir, or "" when the host has no such v1 hierarchy.
func CgroupV1(controller, dir string) (string, error) {
	v2, err := redirect.FindCgroup2()
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(v2, dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("%s is not under the cgroup v2 mount %s", dir, v2)
	}
	mnt, err := mountV1(controller)
	if err != nil || mnt == "" {
		return "", err
	}
	return filepath.Join(mnt, rel), nil
}

// mountV1 returns the mount point of the cgroup v1 hierarchy of controller ("" for none). Only a
// mount of the hierarchy's root counts: the lab's paths are absolute in it.
func mountV1(controller string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fs := strings.Fields(sc.Text())
		i := slices.Index(fs, "-")
		if i < 5 || i+3 >= len(fs) || fs[i+1] != "cgroup" || fs[3] != "/" {
			continue
		}
		if slices.Contains(strings.Split(fs[i+3], ","), controller) {
			return fs[4], nil
		}
	}
	return "", sc.Err()
}

// memoryLimit returns a container's memory limit in bytes (0: none).
func memoryLimit(c *corev1.Container) int64 {
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		return q.Value()
	}
	return 0
}

// cfsPeriod is the CFS period of a cpu limit, as runtimes set it (100 ms).
const cfsPeriod = 100000 // µs

// cpuQuota returns a container's CFS quota in µs per cfsPeriod (0: no limit).
func cpuQuota(c *corev1.Container) int64 {
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		return max(q.MilliValue()*cfsPeriod/1000, 1000) // the kernel's minimum is 1 ms
	}
	return 0
}

// limitCgroups makes the v1 cgroups that hold c's memory and cpu limits, as far as the host has
// the hierarchies, and returns them for podinit to join. The memory cgroup is recorded in c, for
// telling an OOM kill from another SIGKILL.
func (w *podWorker) limitCgroups(c *container) ([]string, error) {
	var dirs []string
	if limit := memoryLimit(&c.spec); limit > 0 && w.k.memRoot != "" {
		dir := filepath.Join(w.k.memRoot, string(w.pod.UID), c.spec.Name)
		n, err := newMemoryCgroup(dir, limit)
		if err != nil {
			return nil, err
		}
		c.memCgroup, c.oomKills = dir, n
		dirs = append(dirs, dir)
	}
	if quota := cpuQuota(&c.spec); quota > 0 && w.k.cpuRoot != "" {
		dir := filepath.Join(w.k.cpuRoot, string(w.pod.UID), c.spec.Name)
		if err := newCPUCgroup(dir, quota); err != nil {
			return nil, err
		}
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

// newCPUCgroup creates the cpu cgroup dir with quota µs per period.
func newCPUCgroup(dir string, quota int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cpu cgroup: %w", err)
	}
	for f, v := range map[string]int64{"cpu.cfs_period_us": cfsPeriod, "cpu.cfs_quota_us": quota} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(strconv.FormatInt(v, 10)), 0); err != nil {
			return fmt.Errorf("cpu cgroup %s: %s: %w", dir, f, err)
		}
	}
	return nil
}

// newMemoryCgroup creates the memory cgroup dir with limit bytes; it returns the cgroup's OOM
// kill count so far (a cgroup kept across restarts keeps counting).
func newMemoryCgroup(dir string, limit int64) (int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("memory cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		return 0, fmt.Errorf("memory cgroup %s: set limit %d: %w", dir, limit, err)
	}
	return oomKills(dir)
}

// oomKills returns the OOM kills a v1 memory cgroup counted (memory.oom_control's oom_kill).
func oomKills(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("memory.oom_control has no oom_kill count")
}

// RemoveCgroupTree removes the cgroup dir and its descendants, deepest first. A cgroup is
// removed with rmdir, which fails until the kernel has reaped its tasks, so each is retried for a
// few seconds.
func RemoveCgroupTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, RemoveCgroupTree(filepath.Join(dir, e.Name())))
		}
	}
	for range 50 {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(append(errs, err)...)
}
