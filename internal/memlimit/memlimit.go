// Package memlimit sets Go's soft memory limit from the cgroup v2 memory limit of the process's
// container, so that manifests need not repeat limits.memory as GOMEMLIMIT.
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

// Set sets the Go soft memory limit to Fraction of the smallest cgroup v2 memory.max of the
// process's cgroup and its ancestors (as far as the cgroup mount shows them), unless GOMEMLIMIT is
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
		log.Info("memory limit: no cgroup v2 memory limit found; no Go memory limit set")
	default:
		n := int64(float64(limit) * Fraction)
		apply(n)
		log.Info("memory limit from cgroup", "cgroup", dir, "cgroupLimitBytes", limit, "goMemLimitBytes", n)
	}
}

// Find returns the smallest memory.max of the process's cgroup v2 and its ancestors visible
// under the cgroup2 mount, and the directory it was read from, using the files under root ("/"
// on a real system: root/proc/self/cgroup, root/proc/self/mountinfo, and the mount point under
// root). limit is 0 when there is none: "max" everywhere, no cgroup v2 mount (a cgroup v1 only
// machine), no cgroup v2 entry, or a cgroup outside every visible mount.
func Find(root string) (limit int64, dir string, err error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil // no /proc (not Linux)
	} else if err != nil {
		return 0, "", err
	}
	cg, ok := parseCgroup(string(b))
	if !ok {
		return 0, "", nil // cgroup v1 only, or a cgroup outside the namespace
	}
	mounts, err := os.ReadFile(filepath.Join(root, "proc/self/mountinfo"))
	if err != nil {
		return 0, "", err
	}
	mnt, rel, ok := findMount(string(mounts), cg)
	if !ok {
		return 0, "", nil
	}
	// Walk from the cgroup up to the mount point: a pod's limit may be set on a parent.
	for r := rel; ; r = path.Dir(r) {
		d := filepath.Join(root, mnt, r)
		n, err := readMax(filepath.Join(d, "memory.max"))
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
	return limit, dir, nil
}

// parseCgroup returns the cgroup v2 path of /proc/self/cgroup: the "0::<path>" line; false if
// there is none (cgroup v1 only) or it cannot be resolved.
func parseCgroup(s string) (string, bool) {
	for line := range strings.Lines(s) {
		p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::")
		if !ok {
			continue
		}
		// A cgroup outside the reader's cgroup namespace ("/../x") is in no mount it can see.
		if !strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
			return "", false
		}
		return path.Clean(p), true
	}
	return "", false
}

// findMount returns the cgroup2 mount point that shows the cgroup cg, and cg relative to that
// mount's root. Of several mounts at the same mount point only the last one (on top) counts. A
// mount whose root is not an ancestor of cg (another subtree, or above the reader's cgroup
// namespace: "/..") does not show it.
func findMount(mountinfo, cg string) (mnt, rel string, ok bool) {
	type entry struct{ root, fstype string }
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
		top[mp] = entry{root: unescape(f[3]), fstype: f[sep+1]}
	}
	for _, mp := range order {
		e := top[mp]
		if e.fstype != "cgroup2" {
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

// readMax reads a memory.max file: 0 for "max" or a missing file (the root cgroup has none),
// else the limit in bytes.
func readMax(p string) (int64, error) {
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
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s: unexpected contents %q", p, s)
	}
	return n, nil
}
