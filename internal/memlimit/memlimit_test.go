package memlimit

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	mountCgroup2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
	mountRoot    = "24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
	ctrPath      = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
	mib          = 1 << 20
)

// tree writes a fake root: files maps paths under root to contents.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// v2 returns the files of a unified host whose process runs in ctrPath, with the given
// memory.max for the container, the pod and kubepods.slice.
func v2(ctr, pod, kubepods string) map[string]string {
	return map[string]string{
		"proc/self/cgroup":    "0::" + ctrPath + "\n",
		"proc/self/mountinfo": mountRoot + mountCgroup2,
		"sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope/memory.max": ctr + "\n",
		"sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/memory.max":                          pod + "\n",
		"sys/fs/cgroup/kubepods.slice/memory.max":                                              kubepods + "\n",
		// The root cgroup has no memory.max.
		"sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
	}
}

func TestFind(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		limit   int64
		dir     string
		wantErr bool
	}{
		{
			name:  "limit on the process's cgroup",
			files: v2("536870912", "max", "max"),
			limit: 512 * mib, dir: "/sys/fs/cgroup" + ctrPath,
		},
		{
			name:  "smaller limit on a parent wins",
			files: v2("536870912", "268435456", "max"),
			limit: 256 * mib, dir: "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice",
		},
		{
			name:  "limit only on the grandparent",
			files: v2("max", "max", "1073741824"),
			limit: 1024 * mib, dir: "/sys/fs/cgroup/kubepods.slice",
		},
		{
			name:  "max everywhere: no limit",
			files: v2("max", "max", "max"),
		},
		{
			name: "cgroup v1 only: memory.limit_in_bytes",
			files: map[string]string{
				"proc/self/cgroup": "12:memory:/kubepods/pod1/abc\n11:cpu,cpuacct:/kubepods/pod1/abc\n1:name=systemd:/kubepods/pod1/abc\n",
				"proc/self/mountinfo": mountRoot +
					"29 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct\n" +
					"30 24 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory\n",
				"sys/fs/cgroup/memory/kubepods/pod1/abc/memory.limit_in_bytes": "536870912\n",
				"sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes":     "9223372036854771712\n",
			},
			limit: 512 * mib, dir: "/sys/fs/cgroup/memory/kubepods/pod1/abc",
		},
		{
			name: "cgroup v1 unlimited everywhere: no limit",
			files: map[string]string{
				"proc/self/cgroup":    "4:memory:/kubepods/pod1/abc\n",
				"proc/self/mountinfo": mountRoot + "30 24 0:26 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory\n",
				"sys/fs/cgroup/memory/kubepods/pod1/abc/memory.limit_in_bytes": "9223372036854771712\n",
			},
		},
		{
			name: "a v1 hierarchy without the memory controller does not count",
			files: map[string]string{
				"proc/self/cgroup":    "3:cpu:/kubepods/pod1/abc\n",
				"proc/self/mountinfo": mountRoot + "29 24 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n",
				"sys/fs/cgroup/cpu/kubepods/pod1/abc/memory.limit_in_bytes": "536870912\n",
			},
		},
		{
			// As on hosts whose unified hierarchy carries no controllers: the v2 cgroup has
			// no memory.max; the limit is in the v1 memory hierarchy.
			name: "hybrid host: v2 without memory.max, limit in v1",
			files: map[string]string{
				"proc/self/cgroup": "4:memory:/lab/node-1/pod1\n0::/lab/node-1/pod1\n",
				"proc/self/mountinfo": mountRoot +
					"30 24 0:26 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory\n" +
					"31 24 0:27 / /sys/fs/cgroup/unified rw shared:13 - cgroup2 cgroup2 rw\n",
				"sys/fs/cgroup/unified/lab/node-1/pod1/cgroup.procs":         "",
				"sys/fs/cgroup/memory/lab/node-1/pod1/memory.limit_in_bytes": "134217728\n",
			},
			limit: 128 * mib, dir: "/sys/fs/cgroup/memory/lab/node-1/pod1",
		},
		{
			name: "both hierarchies limit: the smaller wins",
			files: map[string]string{
				"proc/self/cgroup": "4:memory:/p\n0::/p\n",
				"proc/self/mountinfo": mountRoot +
					"30 24 0:26 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory\n" +
					"31 24 0:27 / /sys/fs/cgroup/unified rw shared:13 - cgroup2 cgroup2 rw\n",
				"sys/fs/cgroup/unified/p/memory.max":           "268435456\n",
				"sys/fs/cgroup/memory/p/memory.limit_in_bytes": "134217728\n",
			},
			limit: 128 * mib, dir: "/sys/fs/cgroup/memory/p",
		},
		{
			name: "private cgroup namespace: the container's cgroup is the mount's root",
			files: map[string]string{
				"proc/self/cgroup":               "0::/\n",
				"proc/self/mountinfo":            mountRoot + mountCgroup2,
				"sys/fs/cgroup/memory.max":       "134217728\n",
				"sys/fs/cgroup/cgroup.subtree_x": "",
			},
			limit: 128 * mib, dir: "/sys/fs/cgroup",
		},
		{
			name: "subtree mounted: the path is taken relative to the mount's root",
			files: map[string]string{
				"proc/self/cgroup": "0::" + ctrPath + "\n",
				"proc/self/mountinfo": mountRoot +
					"35 24 0:30 /kubepods.slice/kubepods-pod1.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
				"sys/fs/cgroup/cri-containerd-abc.scope/memory.max": "max\n",
				"sys/fs/cgroup/memory.max":                          "268435456\n",
			},
			limit: 256 * mib, dir: "/sys/fs/cgroup",
		},
		{
			name: "the host's hierarchy mounted over the container's: shadowed mount not used",
			files: map[string]string{
				"proc/self/cgroup": "0::/\n",
				"proc/self/mountinfo": mountRoot + mountCgroup2 +
					"50 35 0:30 /../../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
				// Read through the shadowed mount this would be the container's limit; what
				// is really there is the host's root cgroup, which has none.
				"sys/fs/cgroup/memory.max": "134217728\n",
			},
		},
		{
			name: "privileged (host cgroup namespace) with the host's hierarchy mounted over the container's",
			files: map[string]string{
				"proc/self/cgroup": "0::" + ctrPath + "\n",
				"proc/self/mountinfo": mountRoot + mountCgroup2 +
					"50 35 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
				"sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope/memory.max": "268435456\n",
			},
			limit: 256 * mib, dir: "/sys/fs/cgroup" + ctrPath,
		},
		{
			name: "escaped mount point",
			files: map[string]string{
				"proc/self/cgroup":           "0::/a\n",
				"proc/self/mountinfo":        mountRoot + `35 24 0:30 / /cg\040v2 rw - cgroup2 cgroup2 rw` + "\n",
				"cg v2/a/memory.max":         "104857600\n",
				"sys/fs/cgroup/a/memory.max": "1\n",
			},
			limit: 100 * mib, dir: "/cg v2/a",
		},
		{
			name: "cgroup outside the reader's namespace: no limit",
			files: map[string]string{
				"proc/self/cgroup":               "0::/../other\n",
				"proc/self/mountinfo":            mountRoot + mountCgroup2,
				"sys/fs/cgroup/other/memory.max": "134217728\n",
			},
		},
		{
			name:  "no /proc: no limit",
			files: map[string]string{"etc/hostname": "x\n"},
		},
		{
			name:    "unreadable memory.max contents are an error",
			files:   v2("lots", "max", "max"),
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit, dir, err := Find(tree(t, tc.files))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if limit != tc.limit || dir != tc.dir {
				t.Errorf("Find = %d, %q; want %d, %q", limit, dir, tc.limit, tc.dir)
			}
		})
	}
}

func runSet(t *testing.T, root, env string) (applied []int64, logged string) {
	t.Helper()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	set(log, root, env, func(n int64) { applied = append(applied, n) })
	if lines := strings.Count(buf.String(), "\n"); lines != 1 {
		t.Errorf("logged %d lines, want 1:\n%s", lines, buf.String())
	}
	return applied, buf.String()
}

func TestSet(t *testing.T) {
	t.Run("90% of the limit", func(t *testing.T) {
		applied, logged := runSet(t, tree(t, v2("536870912", "max", "max")), "")
		if len(applied) != 1 || applied[0] != 536870912*9/10 {
			t.Errorf("applied %v, want [%d]", applied, 536870912*9/10)
		}
		if !strings.Contains(logged, "goMemLimitBytes=483183820") {
			t.Errorf("log: %s", logged)
		}
	})
	t.Run("GOMEMLIMIT set: untouched", func(t *testing.T) {
		applied, logged := runSet(t, tree(t, v2("536870912", "268435456", "max")), "300MiB")
		if len(applied) != 0 {
			t.Errorf("applied %v, want nothing", applied)
		}
		if !strings.Contains(logged, "GOMEMLIMIT=300MiB") {
			t.Errorf("log: %s", logged)
		}
	})
	t.Run("no limit", func(t *testing.T) {
		applied, logged := runSet(t, tree(t, v2("max", "max", "max")), "")
		if len(applied) != 0 {
			t.Errorf("applied %v, want nothing", applied)
		}
		if !strings.Contains(logged, "no cgroup memory limit") {
			t.Errorf("log: %s", logged)
		}
	})
	t.Run("error: logged, untouched", func(t *testing.T) {
		applied, logged := runSet(t, tree(t, v2("lots", "max", "max")), "")
		if len(applied) != 0 {
			t.Errorf("applied %v, want nothing", applied)
		}
		if !strings.Contains(logged, "level=WARN") {
			t.Errorf("log: %s", logged)
		}
	})
}
