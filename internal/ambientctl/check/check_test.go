package check

// Unit tests of the checks on a fake machine: a /proc, /sys and CNI directory written to a
// temporary directory, a fake uname and fake eBPF probes. Rules: every case starts from a
// healthy machine and breaks one thing, and asserts the status of every check, so that a
// problem shows in its own check and nowhere else; a result that is not ok must have a hint.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
)

const (
	unifiedMountinfo = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 22 0:24 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:10 - bpf bpf rw,mode=700
`
	hybridMountinfo = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 22 0:38 / /sys/fs/bpf rw,relatime - bpf bpf rw
`
	v1Mountinfo = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 22 0:38 / /sys/fs/bpf rw,relatime - bpf bpf rw
`
	rootStatus = "Name:\tambientctl\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n"
	userStatus = "Name:\tambientctl\nUid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
	conflist   = `{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "ptp"}]}`
)

// machine is a node to write under a temporary directory.
type machine struct {
	release   string            // empty: uname fails
	mountinfo string            // empty: no /proc at all
	status    string            // empty: no status file
	btf       string            // contents of vmlinux; empty: no file
	cni       map[string]string // file name -> contents; nil: no directory
	probe     func(Hook) error
}

func healthy() machine {
	return machine{
		release:   "6.8.0-45-generic",
		mountinfo: unifiedMountinfo,
		status:    rootStatus,
		btf:       "\x9f\xeb\x01\x00 BTF",
		cni:       map[string]string{"10-calico.conflist": conflist},
		probe:     func(Hook) error { return nil },
	}
}

func (m machine) env(t *testing.T) Env {
	t.Helper()
	dir := t.TempDir()
	env := Env{
		ProcRoot:   filepath.Join(dir, "proc"),
		SysRoot:    filepath.Join(dir, "sys"),
		CNIConfDir: filepath.Join(dir, "etc/cni/net.d"),
		Uname:      func() (string, error) { return m.release, nil },
		Probe:      m.probe,
	}
	if m.release == "" {
		env.Uname = func() (string, error) { return "", fmt.Errorf("uname: %w", os.ErrInvalid) }
	}
	write := func(path, contents string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(contents), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if m.mountinfo != "" {
		write(filepath.Join(env.ProcRoot, "self/mountinfo"), m.mountinfo)
	}
	if m.status != "" {
		write(filepath.Join(env.ProcRoot, "self/status"), m.status)
	}
	if m.btf != "" {
		write(filepath.Join(env.SysRoot, "kernel/btf/vmlinux"), m.btf)
	}
	if m.cni != nil {
		if err := os.MkdirAll(env.CNIConfDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, contents := range m.cni {
			write(filepath.Join(env.CNIConfDir, name), contents)
		}
	}
	return env
}

var names = []string{"kernel", "cgroup2", "btf", "ebpf", "bpffs", "cni", "privileges"}

// statuses returns every check ok except those in bad.
func statuses(bad map[string]Status) map[string]Status {
	out := map[string]Status{}
	for _, n := range names {
		out[n] = OK
	}
	for n, s := range bad {
		out[n] = s
	}
	return out
}

func TestRun(t *testing.T) {
	notSupported := func(bad Hook) func(Hook) error {
		return func(h Hook) error {
			if h == bad {
				return fmt.Errorf("%s: %w", h, ebpf.ErrNotSupported)
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name   string
		breaks func(*machine)
		want   map[string]Status // the checks that are not ok
		detail map[string]string // check -> a substring of its Detail
		hint   map[string]string // check -> a substring of its Hint
	}{{
		name:   "healthy",
		breaks: func(*machine) {},
		detail: map[string]string{"cgroup2": "at /sys/fs/cgroup", "cni": "10-calico.conflist", "kernel": "6.8.0-45-generic"},
	}, {
		name:   "old kernel",
		breaks: func(m *machine) { m.release = "5.15.0" },
		want:   map[string]Status{"kernel": Fail},
		hint:   map[string]string{"kernel": "6.6"},
	}, {
		name:   "kernel 6.5",
		breaks: func(m *machine) { m.release = "6.5.13-1-default" },
		want:   map[string]Status{"kernel": Fail},
	}, {
		name:   "uname fails",
		breaks: func(m *machine) { m.release = "" },
		want:   map[string]Status{"kernel": Fail},
	}, {
		name:   "no cgroup2",
		breaks: func(m *machine) { m.mountinfo = v1Mountinfo },
		want:   map[string]Status{"cgroup2": Fail},
		hint:   map[string]string{"cgroup2": "systemd.unified_cgroup_hierarchy=1"},
	}, {
		name:   "hybrid cgroups",
		breaks: func(m *machine) { m.mountinfo = hybridMountinfo },
		detail: map[string]string{"cgroup2": "--cgroup=/sys/fs/cgroup/unified"},
	}, {
		name:   "no btf",
		breaks: func(m *machine) { m.btf = "" },
		want:   map[string]Status{"btf": Fail},
		hint:   map[string]string{"btf": "CONFIG_DEBUG_INFO_BTF=y"},
	}, {
		name:   "sk_lookup not supported",
		breaks: func(m *machine) { m.probe = notSupported(HookSkLookup) },
		want:   map[string]Status{"ebpf": Fail},
		detail: map[string]string{"ebpf": "sk_lookup: not supported"},
		hint:   map[string]string{"ebpf": "CONFIG_INET"},
	}, {
		name:   "tcx not supported",
		breaks: func(m *machine) { m.probe = notSupported(HookTCX) },
		want:   map[string]Status{"ebpf": Fail},
		hint:   map[string]string{"ebpf": "CONFIG_NET_XGRESS"},
	}, {
		name:   "probe inconclusive",
		breaks: func(m *machine) { m.probe = func(Hook) error { return os.ErrClosed } },
		want:   map[string]Status{"ebpf": Fail},
		detail: map[string]string{"ebpf": "probe failed"},
	}, {
		name:   "probe denied",
		breaks: func(m *machine) { m.probe = func(Hook) error { return fmt.Errorf("load: %w", os.ErrPermission) } },
		want:   map[string]Status{"ebpf": Warn},
		hint:   map[string]string{"ebpf": "run as root to probe eBPF"},
	}, {
		name: "unprivileged",
		breaks: func(m *machine) {
			m.status = userStatus
			m.probe = func(h Hook) error { panic("probed " + h + " without privileges") }
		},
		want:   map[string]Status{"ebpf": Warn, "privileges": Warn},
		detail: map[string]string{"privileges": "uid 1000; CapEff lacks CAP_SYS_ADMIN, CAP_BPF"},
		hint:   map[string]string{"ebpf": "run as root to probe eBPF"},
	}, {
		name:   "no bpffs",
		breaks: func(m *machine) { m.mountinfo = strings.ReplaceAll(unifiedMountinfo, " /sys/fs/bpf ", " /run/bpf ") },
		want:   map[string]Status{"bpffs": Fail},
		detail: map[string]string{"bpffs": "bpf is mounted at /run/bpf"},
		hint:   map[string]string{"bpffs": "mount -t bpf bpf /sys/fs/bpf"},
	}, {
		name: "bpffs covered",
		breaks: func(m *machine) {
			m.mountinfo += "50 27 0:50 / /sys/fs/bpf rw,relatime - tmpfs tmpfs rw\n"
		},
		want:   map[string]Status{"bpffs": Fail},
		detail: map[string]string{"bpffs": "is tmpfs"},
	}, {
		name:   "no cni directory",
		breaks: func(m *machine) { m.cni = nil },
		want:   map[string]Status{"cni": Fail},
		hint:   map[string]string{"cni": "network plugin"},
	}, {
		name:   "no cni conf",
		breaks: func(m *machine) { m.cni = map[string]string{"README": "x", "calico-kubeconfig": "x"} },
		want:   map[string]Status{"cni": Fail},
		hint:   map[string]string{"cni": "network plugin"},
	}, {
		name: "first cni conf in lexical order",
		breaks: func(m *machine) {
			m.cni = map[string]string{"20-b.conflist": conflist, "05-a.conflist": conflist, "99-z.conf": `{"type": "bridge"}`}
		},
		detail: map[string]string{"cni": "05-a.conflist"},
	}, {
		name:   "single-plugin cni conf",
		breaks: func(m *machine) { m.cni = map[string]string{"10-bridge.conf": `{"type": "bridge"}`} },
		want:   map[string]Status{"cni": Fail},
		hint:   map[string]string{"cni": ".conflist"},
	}, {
		name:   "no /proc",
		breaks: func(m *machine) { m.mountinfo, m.status = "", "" },
		want:   map[string]Status{"cgroup2": Fail, "bpffs": Fail, "privileges": Warn},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m := healthy()
			tc.breaks(&m)
			results := Run(context.Background(), m.env(t))

			got := map[string]Status{}
			var order []string
			for _, r := range results {
				got[r.Name] = r.Status
				order = append(order, r.Name)
				if (r.Status == OK) != (r.Hint == "") {
					t.Errorf("%s: status %s with hint %q: a hint is wanted exactly when not ok", r.Name, r.Status, r.Hint)
				}
				if r.Detail == "" {
					t.Errorf("%s: no detail", r.Name)
				}
			}
			if diff := cmp.Diff(names, order); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(statuses(tc.want), got); diff != "" {
				t.Errorf("statuses (-want +got):\n%s\nresults: %+v", diff, results)
			}
			if Failed(results) != slices.Contains(slices.Collect(maps.Values(tc.want)), Fail) {
				t.Errorf("Failed = %v with statuses %v", Failed(results), got)
			}
			for _, r := range results {
				if s, ok := tc.detail[r.Name]; ok && !strings.Contains(r.Detail, s) {
					t.Errorf("%s: detail %q does not contain %q", r.Name, r.Detail, s)
				}
				if s, ok := tc.hint[r.Name]; ok && !strings.Contains(r.Hint, s) {
					t.Errorf("%s: hint %q does not contain %q", r.Name, r.Hint, s)
				}
			}
		})
	}
}

func TestRunStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := Run(ctx, healthy().env(t)); len(got) != 0 {
		t.Errorf("Run with a done context = %+v, want no results", got)
	}
}

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    [2]int
		wantErr bool
	}{
		{release: "6.8.0-45-generic", want: [2]int{6, 8}},
		{release: "6.6", want: [2]int{6, 6}},
		{release: "6.10.0+", want: [2]int{6, 10}},
		{release: "6.6.87.2-microsoft-standard-WSL2", want: [2]int{6, 6}},
		{release: "5.15.0", want: [2]int{5, 15}},
		{release: "6.18.44-fc-v1272", want: [2]int{6, 18}},
		{release: "6", wantErr: true},
		{release: "", wantErr: true},
		{release: "linux-6.8", wantErr: true},
	} {
		got, err := parseRelease(tc.release)
		if (err != nil) != tc.wantErr || !tc.wantErr && got != tc.want {
			t.Errorf("parseRelease(%q) = %v, %v; want %v (error: %v)", tc.release, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestReadMountinfo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mountinfo")
	const mi = `1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:2 / /sys/fs/bpf rw shared:1 master:2 - tmpfs tmpfs rw
3 2 0:3 / /sys/fs/bpf rw - bpf bpf rw
truncated line
4 1 0:4 / /mnt/with\040space rw - cgroup2 cgroup2 rw
`
	if err := os.WriteFile(path, []byte(mi), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readMountinfo(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []mount{{"/", "ext4"}, {"/sys/fs/bpf", "bpf"}, {`/mnt/with\040space`, "cgroup2"}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(mount{})); diff != "" {
		t.Errorf("readMountinfo (-want +got):\n%s", diff)
	}
}
