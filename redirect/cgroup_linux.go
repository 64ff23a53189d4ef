package redirect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 is returned by FindCgroup2 when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup v2 mount")

// FindCgroup2 returns the mount point of the cgroup v2 hierarchy: /sys/fs/cgroup on a unified
// host, /sys/fs/cgroup/unified on a hybrid one.
func FindCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options... - fstype source superoptions
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && i >= 5 {
				if fields[i+1] == "cgroup2" {
					return fields[4], nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", ErrNoCgroup2
}

// checkFS reports whether path is on a filesystem with the given magic.
func checkFS(path string, magic int64, what string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if int64(st.Type) != magic {
		return fmt.Errorf("%s is not on %s", path, what)
	}
	return nil
}

// CgroupID returns the cgroup v2 id of the cgroup directory at path: the kernfs node id, which
// is what bpf_get_current_cgroup_id and bpf_get_current_ancestor_cgroup_id return, and the key
// of the proxy cgroups map (AllowProxyCgroup).
func CgroupID(path string) (uint64, error) {
	if err := checkFS(path, unix.CGROUP2_SUPER_MAGIC, "cgroup v2"); err != nil {
		return 0, fmt.Errorf("cgroup id: %w", err)
	}
	// The file handle of a kernfs node is its 64-bit id; the inode number is the same id only
	// where ino_t has 64 bits.
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	if b := h.Bytes(); len(b) == 8 {
		return binary.NativeEndian.Uint64(b), nil
	}
	return 0, fmt.Errorf("cgroup id of %s: file handle of %d bytes", path, h.Size())
}

// CgroupOfPID returns the directory under cgroupRoot (a cgroup v2 mount) of the cgroup v2
// the process pid runs in, read from /proc/<pid>/cgroup.
//
// The path there is relative to the reader's cgroup namespace root, which is not always
// cgroupRoot: where cgroupRoot is a bind mount of a subtree of the hierarchy (a node of the lab
// gets its own subtree mounted at /sys/fs/cgroup, with no cgroup namespace of its own), the path
// starts with the components above the subtree. So the result is cgroupRoot joined with the
// longest suffix of the path (whole components) that exists under it. A shorter suffix could
// name another cgroup only if the subtree held a directory of the same name higher up than the
// real one, which the longest match already prefers to avoid. A path from outside the reader's
// cgroup namespace ("/../x") is resolved the same way, never above cgroupRoot. A process in the
// root cgroup ("/") resolves to cgroupRoot; when no suffix of any other path exists, the result
// is an error, not cgroupRoot, so that no caller registers a whole subtree by accident.
func CgroupOfPID(cgroupRoot string, pid int) (string, error) {
	return cgroupOfPID("/proc", cgroupRoot, pid)
}

func cgroupOfPID(procRoot, cgroupRoot string, pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	p, err := parseProcCgroup(string(b))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	dir, err := resolveCgroup(cgroupRoot, p)
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return dir, nil
}

// parseProcCgroup returns the cgroup v2 path of a /proc/<pid>/cgroup file: the "0::<path>"
// line (a hybrid host lists the v1 hierarchies too).
func parseProcCgroup(contents string) (string, error) {
	for line := range strings.Lines(contents) {
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			if !strings.HasPrefix(p, "/") {
				return "", fmt.Errorf("cgroup v2 path %q is not absolute", p)
			}
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}

// resolveCgroup returns root joined with the longest suffix of p that is a directory under root
// (see CgroupOfPID).
func resolveCgroup(root, p string) (string, error) {
	if p == "/" {
		return root, nil
	}
	parts := strings.Split(strings.Trim(p, "/"), "/")
	// Components up to the last ".." are outside the reader's namespace: never above root.
	start := 0
	for i, c := range parts {
		if c == ".." || c == "." || c == "" {
			start = i + 1
		}
	}
	parts = parts[start:]
	for i := range parts {
		dir := filepath.Join(append([]string{root}, parts[i:]...)...)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no suffix of %s exists under %s", p, root)
}
