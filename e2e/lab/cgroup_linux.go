package lab

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// Cgroup2Root returns the mount point of the cgroup v2 hierarchy (/sys/fs/cgroup on unified
// hosts, /sys/fs/cgroup/unified on hybrid ones).
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// fields: id parent major:minor root mountpoint opts ... - fstype source superopts
		line := s.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		post := strings.Fields(line[sep+3:])
		pre := strings.Fields(line[:sep])
		if len(post) > 0 && post[0] == "cgroup2" && len(pre) > 4 {
			return pre[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy mounted")
}

// LabCgroup is the parent of every cgroup the lab creates.
func LabCgroup() (string, error) {
	root, err := Cgroup2Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, CgroupParent), nil
}

// removeCgroupTree removes dir and its descendants, deepest first. cgroup directories are
// removed with rmdir, which fails while a process is still in them.
func removeCgroupTree(dir string) error {
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
			errs = append(errs, removeCgroupTree(filepath.Join(dir, e.Name())))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
