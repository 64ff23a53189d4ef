// Package check is the logic of `ambientctl check`: a preflight check of the local node for
// what the redirector (redirect/) and the agent need from the kernel and the host: a recent
// enough kernel, cgroup v2, BTF, the eBPF hooks the design loads, bpffs, a CNI configuration
// to chain onto, and the privileges to do all that.
//
// It owns the checks and the words of their results. It must not change the machine: it reads
// files and loads throwaway eBPF programs that it attaches nowhere (see env_linux.go). It does
// not print, log or exit; the command prints the results and chooses the exit code. Everything
// it reads goes through Env, so that a test can stand up a fake machine in a directory.
package check

// This file holds the API (Status, Result, Env, Run) and the checks themselves. Rules: every
// check returns exactly one Result, in the order of the checks slice in Run; a Result that is
// not ok always carries a Hint naming what to change (kernel config, mount, package); "warn" is
// only for what running unprivileged prevents us from knowing, never for a known problem.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/ambient-mesh/ambient/redirect/cni"
)

// Status is the outcome of one check.
type Status string

const (
	OK   Status = "ok"
	Fail Status = "fail"
	// Warn is a check that could not be completed without privileges, or privileges missing.
	Warn Status = "warn"
)

// Result is the outcome of one check.
type Result struct {
	Name   string `json:"name"` // short and stable, e.g. "kernel", "cgroup2"
	Status Status `json:"status"`
	Detail string `json:"detail"`         // what was found
	Hint   string `json:"hint,omitempty"` // what to do about it; empty when Status is OK
}

// Hook is a kind of eBPF program (or link) the design uses, as Env.Probe is asked about it.
type Hook string

const (
	HookCgroupSockAddr Hook = "cgroup_sock_addr" // cgroup/connect4, connect6, getpeername4, getpeername6
	HookSockOps        Hook = "sock_ops"         // sockops
	HookSkLookup       Hook = "sk_lookup"        // sk_lookup, per pod network namespace
	HookTCX            Hook = "tcx"              // tcx/ingress link, per pod interface
)

// hooks are the probes of the eBPF check, in the order reported, with what to do when one is
// missing. The kernel options are those without which the kernel cannot load the program type
// at all; the version is when the hook appeared.
var hooks = []struct {
	hook Hook
	uses string
	hint string
}{
	{HookCgroupSockAddr, "connect4/6, getpeername4/6", "CONFIG_CGROUP_BPF=y and CONFIG_BPF_SYSCALL=y"},
	{HookSockOps, "", "CONFIG_CGROUP_BPF=y and CONFIG_BPF_SYSCALL=y"},
	{HookSkLookup, "", "Linux 5.9+ with CONFIG_BPF_SYSCALL=y and CONFIG_INET=y"},
	{HookTCX, "tcx/ingress", "Linux 6.6+ with CONFIG_BPF_SYSCALL=y (which selects CONFIG_NET_XGRESS)"},
}

// Env is the machine under check. DefaultEnv is the real one; tests point the roots at a
// directory and fake the functions.
type Env struct {
	ProcRoot   string // "/proc": self/mountinfo and self/status are read
	SysRoot    string // "/sys": kernel/btf/vmlinux is read
	CNIConfDir string // "/etc/cni/net.d"
	// Uname returns the kernel release, as `uname -r` prints it.
	Uname func() (release string, err error)
	// Probe reports whether the kernel can load the hook: nil if it can, an error matching
	// ebpf.ErrNotSupported if it cannot, one matching os.ErrPermission if the caller may not ask,
	// any other error if the probe could not tell.
	Probe func(Hook) error
}

// The oldest kernel release the design runs on: the inbound hook is a tcx link, which appeared
// in Linux 6.6.
const minMajor, minMinor = 6, 6

// bpffsDir is where the agent pins its maps and links (redirect.DefaultPinDir is a directory
// under it) and what its DaemonSet mounts from the host.
const bpffsDir = "/sys/fs/bpf"

// defaultCgroup is the agent's default --cgroup (redirect.Default).
const defaultCgroup = "/sys/fs/cgroup"

// Run runs every check and returns their results in order. If ctx is done, it stops between
// checks and returns the results so far.
func Run(ctx context.Context, env Env) []Result {
	statusPath := filepath.Join(env.ProcRoot, "self", "status")
	st, stErr := readStatus(statusPath)
	if stErr != nil {
		stErr = fmt.Errorf("read %s: %w", statusPath, stErr)
	}
	mountinfoPath := filepath.Join(env.ProcRoot, "self", "mountinfo")
	mounts, mErr := readMountinfo(mountinfoPath)
	if mErr != nil {
		mErr = fmt.Errorf("read %s: %w", mountinfoPath, mErr)
	}
	checks := []func() Result{
		func() Result { return checkKernel(env.Uname) },
		func() Result { return checkCgroup2(mounts, mErr) },
		func() Result { return checkBTF(filepath.Join(env.SysRoot, "kernel", "btf", "vmlinux")) },
		func() Result { return checkHooks(env.Probe, st, stErr) },
		func() Result { return checkBPFFS(mounts, mErr) },
		func() Result { return checkCNI(env.CNIConfDir) },
		func() Result { return checkPrivileges(st, stErr) },
	}
	var out []Result
	for _, c := range checks {
		if ctx.Err() != nil {
			break
		}
		out = append(out, c())
	}
	return out
}

// Failed reports whether any result is a failure: the node is not ready for the mesh.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func checkKernel(uname func() (string, error)) Result {
	r := Result{Name: "kernel"}
	if uname == nil {
		return fail(r, "no uname in the environment", "run ambientctl check on the node")
	}
	release, err := uname()
	if err != nil {
		return fail(r, fmt.Sprintf("uname: %v", err), "run ambientctl check on the node (Linux)")
	}
	v, err := parseRelease(release)
	if err != nil {
		return fail(r, err.Error(), "check `uname -r`: expected a release like 6.8.0-45-generic")
	}
	if v[0] < minMajor || v[0] == minMajor && v[1] < minMinor {
		return fail(r, fmt.Sprintf("Linux %s, older than %d.%d", release, minMajor, minMinor),
			fmt.Sprintf("upgrade the kernel to %d.%d or newer: the inbound hook is a tcx link (Linux 6.6)", minMajor, minMinor))
	}
	r.Status, r.Detail = OK, fmt.Sprintf("Linux %s", release)
	return r
}

// parseRelease returns the major and minor version of a kernel release ("6.8.0-45-generic",
// "6.10.0+", "6.6.87.2-microsoft-standard-WSL2").
func parseRelease(release string) ([2]int, error) {
	end := strings.IndexFunc(release, func(c rune) bool { return c != '.' && (c < '0' || c > '9') })
	if end < 0 {
		end = len(release)
	}
	f := strings.Split(release[:end], ".")
	var v [2]int
	if len(f) < 2 {
		return v, fmt.Errorf("kernel release %q has no major.minor version", release)
	}
	for i := range v {
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return v, fmt.Errorf("kernel release %q has no major.minor version", release)
		}
		v[i] = n
	}
	return v, nil
}

func checkCgroup2(mounts []mount, err error) Result {
	r := Result{Name: "cgroup2"}
	if err != nil {
		return fail(r, err.Error(), "mount procfs at /proc (ambientctl check reads /proc/self/mountinfo)")
	}
	// The first, as redirect.FindCgroup2 takes it, so that the check reports what the agent uses.
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		r.Status, r.Detail = OK, "cgroup2 mounted at "+m.point
		if m.point != defaultCgroup {
			r.Detail += fmt.Sprintf(" (a hybrid host: start ambient-agent with --cgroup=%s)", m.point)
		}
		return r
	}
	return fail(r, "no cgroup2 mount",
		"boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line), or on a hybrid host "+
			"mount it: mount -t cgroup2 none /sys/fs/cgroup/unified; the connect hooks attach to a cgroup v2 directory")
}

func checkBTF(path string) Result {
	r := Result{Name: "btf"}
	const hint = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are), which provides /sys/kernel/btf/vmlinux"
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail(r, path+" does not exist", hint)
	case err != nil:
		return fail(r, err.Error(), hint)
	case !st.Mode().IsRegular() || st.Size() == 0:
		// sysfs reports the real size of vmlinux, unlike most of its files.
		return fail(r, path+" is empty", hint)
	}
	r.Status, r.Detail = OK, fmt.Sprintf("%s (%d bytes)", path, st.Size())
	return r
}

func checkHooks(probe func(Hook) error, st status, stErr error) Result {
	r := Result{Name: "ebpf"}
	const rootHint = "run as root to probe eBPF"
	if probe == nil {
		return fail(r, "no eBPF probe in the environment", "run ambientctl check on the node (Linux)")
	}
	// Unprivileged, every load fails with EPERM, which says nothing about the kernel. Without
	// the status (stErr), probe anyway: a permission error still ends as a warning below.
	if stErr == nil && !st.canLoadNetPrograms() {
		return warn(r, "not probed: CapEff has neither CAP_SYS_ADMIN nor CAP_BPF with CAP_NET_ADMIN", rootHint)
	}
	var ok, missing, denied, hints []string
	for _, h := range hooks {
		name := string(h.hook)
		if h.uses != "" {
			name += " (" + h.uses + ")"
		}
		err := probe(h.hook)
		switch {
		case err == nil:
			ok = append(ok, name)
		case errors.Is(err, os.ErrPermission):
			denied = append(denied, fmt.Sprintf("%s: %v", name, err))
		case errors.Is(err, ebpf.ErrNotSupported):
			missing = append(missing, name+": not supported")
			hints = append(hints, fmt.Sprintf("%s needs %s", h.hook, h.hint))
		default:
			missing = append(missing, fmt.Sprintf("%s: probe failed: %v", name, err))
			hints = append(hints, fmt.Sprintf("%s needs %s", h.hook, h.hint))
		}
	}
	switch {
	case len(missing) > 0:
		return fail(r, strings.Join(append(missing, denied...), "; "), strings.Join(hints, "; "))
	case len(denied) > 0:
		return warn(r, strings.Join(denied, "; "), rootHint)
	}
	r.Status, r.Detail = OK, strings.Join(ok, ", ")+": loadable"
	return r
}

func checkBPFFS(mounts []mount, err error) Result {
	r := Result{Name: "bpffs"}
	const hint = "mount -t bpf bpf " + bpffsDir + " (and add `bpf " + bpffsDir + " bpf defaults 0 0` to /etc/fstab); " +
		"the agent pins its maps and links under " + bpffsDir + "/ambient"
	if err != nil {
		return fail(r, err.Error(), hint)
	}
	var elsewhere []string
	for _, m := range mounts {
		switch {
		case m.point == bpffsDir && m.fstype == "bpf":
			r.Status, r.Detail = OK, "bpf mounted at "+bpffsDir
			return r
		case m.point == bpffsDir:
			return fail(r, fmt.Sprintf("%s is %s, not bpf", bpffsDir, m.fstype), hint)
		case m.fstype == "bpf":
			elsewhere = append(elsewhere, m.point)
		}
	}
	detail := "no bpf mount at " + bpffsDir
	if len(elsewhere) > 0 {
		detail += " (bpf is mounted at " + strings.Join(elsewhere, ", ") + ")"
	}
	return fail(r, detail, hint)
}

func checkCNI(dir string) Result {
	r := Result{Name: "cni"}
	// The choice of the file is redirect/cni's, which the agent chains onto: the first .conf,
	// .conflist or .json in lexical order, as the container runtime picks it.
	path, err := cni.PrimaryConflist(dir)
	switch {
	case errors.Is(err, cni.ErrNoConflist), errors.Is(err, os.ErrNotExist):
		return fail(r, "no CNI configuration (.conf, .conflist) in "+dir,
			"install the cluster's network plugin first (it writes a .conflist to "+dir+" that ambient-cni chains onto); "+
				"if the runtime reads another directory (containerd: conf_dir of the cri plugin's cni section), check that one")
	case err != nil:
		return fail(r, err.Error(), `rewrite the node's network configuration as a .conflist (a {"plugins": [...]} list) so that ambient-cni can be chained after it`)
	}
	r.Status, r.Detail = OK, path+" (the first in lexical order: the one the runtime uses)"
	return r
}

func checkPrivileges(st status, err error) Result {
	r := Result{Name: "privileges"}
	const hint = "run as root (sudo ambientctl check) to probe eBPF; the agent needs CAP_SYS_ADMIN and CAP_BPF (its DaemonSet runs privileged)"
	if err != nil {
		return warn(r, err.Error(), hint)
	}
	var lacks []string
	for _, c := range []struct {
		bit  uint
		name string
	}{{capSysAdmin, "CAP_SYS_ADMIN"}, {capBPF, "CAP_BPF"}} {
		if !st.has(c.bit) {
			lacks = append(lacks, c.name)
		}
	}
	if len(lacks) > 0 {
		return warn(r, fmt.Sprintf("uid %d; CapEff lacks %s", st.euid, strings.Join(lacks, ", ")), hint)
	}
	r.Status, r.Detail = OK, fmt.Sprintf("uid %d; CapEff has CAP_SYS_ADMIN and CAP_BPF", st.euid)
	return r
}

func fail(r Result, detail, hint string) Result {
	r.Status, r.Detail, r.Hint = Fail, detail, hint
	return r
}

func warn(r Result, detail, hint string) Result {
	r.Status, r.Detail, r.Hint = Warn, detail, hint
	return r
}
