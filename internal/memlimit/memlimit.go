// Package memlimit sets Go's soft memory limit from the memory limit of the process's container,
// so that manifests need not repeat limits.memory as GOMEMLIMIT. It reads cgroup v2 (memory.max)
// and, on hosts where the memory controller is still bound to cgroup v1 (hybrid hosts, where the
// unified hierarchy carries no controllers), memory.limit_in_bytes; the smallest limit found wins.
package memlimit

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// Fraction of the cgroup limit given to the Go runtime: the rest is for what the runtime does not
// count (the binary, stacks of threads outside Go, fragmentation).
const Fraction = 0.9

// Set sets the Go soft memory limit to Fraction of the smallest memory limit of the process's
// cgroup and its ancestors (as far as the cgroup mount shows them), unless GOMEMLIMIT is
// set, which always wins. It logs one line with what it chose. It never fails the process: a
// problem reading the cgroup files is logged and leaves the limit alone.
func Set(log *slog.Logger) {
	set(log, "/", os.Getenv("GOMEMLIMIT"), func(n int64) { debug.SetMemoryLimit(n) })
}

func set(log *slog.Logger, root, env string, apply func(int64)) {
	if env != "" {
		log.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", env)
		return
	}
	limit, dir, err := Find(root)
	switch {
	case err != nil:
		log.Warn("memory limit: cgroup not read; no Go memory limit set", "err", err)
	case limit <= 0:
		log.Info("memory limit: no cgroup memory limit found; no Go memory limit set")
	default:
		n := int64(float64(limit) * Fraction)
		apply(n)
		log.Info("memory limit from cgroup", "cgroup", dir, "cgroupLimitBytes", limit, "goMemLimitBytes", n)
	}
}

// hierarchy is where one cgroup version keeps the memory limit.
type hierarchy struct {
	// cgroup returns the process's cgroup in this hierarchy from /proc/self/cgroup.
	cgroup func(procCgroup string) (string, bool)
	// mount reports whether a mount (file system type, super options) shows this hierarchy.
	mount func(fstype, superOpts string) bool
	file  string // the limit's file in each cgroup directory
}

// hierarchies are cgroup v2, then the v1 memory hierarchy.
var hierarchies = []hierarchy{
	{cgroup: parseCgroup, file: "memory.max",
		mount: func(fstype, _ string) bool { return fstype == "cgroup2" }},
	{cgroup: parseCgroupV1, file: "memory.limit_in_bytes",
		mount: func(fstype, opts string) bool {
			return fstype == "cgroup" && slices.Contains(strings.Split(opts, ","), "memory")
		}},
}

// Find returns the smallest memory limit of the process's cgroup and its ancestors visible under
// the cgroup mounts (memory.max in cgroup v2, memory.limit_in_bytes in the v1 memory hierarchy),
// and the directory it was read from, using the files under root ("/" on a real system:
// root/proc/self/cgroup, root/proc/self/mountinfo, and the mount points under root). limit is 0
// when there is none: no limit anywhere, no cgroup entry or mount, or a cgroup outside every
// visible mount.
func Find(root string) (limit int64, dir string, err error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil // no /proc (not Linux)
	} else if err != nil {
		return 0, "", err
	}
	var mounts string
	for _, h := range hierarchies {
		cg, ok := h.cgroup(string(b))
		if !ok {
			continue
		}
		if mounts == "" {
			m, err := os.ReadFile(filepath.Join(root, "proc/self/mountinfo"))
			if err != nil {
				return 0, "", err
			}
			mounts = string(m)
		}
		mnt, rel, ok := findMount(mounts, cg, h.mount)
		if !ok {
			continue
		}
		// Walk from the cgroup up to the mount point: a pod's limit may be set on a parent.
		for r := rel; ; r = path.Dir(r) {
			d := filepath.Join(root, mnt, r)
			n, err := readLimit(filepath.Join(d, h.file))
			if err != nil {
				return 0, "", err
			}
			if n > 0 && (limit == 0 || n < limit) {
				limit, dir = n, filepath.Join(mnt, r)
			}
			if r == "/" {
				break
			}
		}
	}
	return limit, dir, nil
}

// parseCgroupV1 returns the path of the v1 memory hierarchy in /proc/self/cgroup (the
// "<id>:<controllers>:<path>" line whose controllers include memory).
func parseCgroupV1(s string) (string, bool) {
	for line := range strings.Lines(s) {
		f := strings.SplitN(strings.TrimRight(line, "\n"), ":", 3)
		if len(f) != 3 || !slices.Contains(strings.Split(f[1], ","), "memory") {
			continue
		}
		return cleanCgroup(f[2])
	}
	return "", false
}

// parseCgroup returns the cgroup v2 path of /proc/self/cgroup: the "0::<path>" line; false if
// there is none (cgroup v1 only) or it cannot be resolved.
func parseCgroup(s string) (string, bool) {
	for line := range strings.Lines(s) {
		p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::")
		if !ok {
			continue
		}
		return cleanCgroup(p)
	}
	return "", false
}

// cleanCgroup cleans a cgroup path; a cgroup outside the reader's cgroup namespace ("/../x") is
// in no mount it can see.
func cleanCgroup(p string) (string, bool) {
	if !strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
		return "", false
	}
	return path.Clean(p), true
}

// findMount returns the mount point of a hierarchy (a mount for which is reports true) that
// shows the cgroup cg, and cg relative to that mount's root. Of several mounts at the same mount
// point only the last one (on top) counts. A mount whose root is not an ancestor of cg (another subtree, or above the reader's cgroup
// namespace: "/..") does not show it.
func findMount(mountinfo, cg string, is func(fstype, superOpts string) bool) (mnt, rel string, ok bool) {
	type entry struct{ root, fstype, opts string }
	top := map[string]entry{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 5; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		mp := unescape(f[4])
		if _, seen := top[mp]; !seen {
			order = append(order, mp)
		}
		e := entry{root: unescape(f[3]), fstype: f[sep+1]}
		if sep+3 < len(f) {
			e.opts = f[sep+3]
		}
		top[mp] = e
	}
	for _, mp := range order {
		e := top[mp]
		if !is(e.fstype, e.opts) {
			continue
		}
		// path.Clean would turn "/../.." into "/": a root above the namespace is no ancestor.
		if slices.Contains(strings.Split(e.root, "/"), "..") {
			continue
		}
		r := path.Clean(e.root)
		switch {
		case r == "/":
			return mp, cg, true
		case cg == r:
			return mp, "/", true
		case strings.HasPrefix(cg, r+"/"):
			return mp, cg[len(r):], true
		}
	}
	return "", "", false
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unlimitedV1 is where cgroup v1 limits mean none: an unlimited memory.limit_in_bytes reads as
// the largest page count times the page size (9223372036854771712 with 4 KiB pages).
const unlimitedV1 = 1 << 62

// readLimit reads a memory.max or memory.limit_in_bytes file: 0 for no limit ("max", v1's
// unlimited value, or a missing file: the root cgroup has none), else the limit in bytes.
func readLimit(p string) (int64, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err == nil && n >= unlimitedV1 {
		return 0, nil
	}
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s: unexpected contents %q", p, s)
	}
	return n, nil
}
