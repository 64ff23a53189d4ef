package lab

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/ambient-mesh/ambient/redirect"
)

// LabCgroup is the parent of every cgroup the lab creates.
func LabCgroup() (string, error) {
	root, err := redirect.FindCgroup2()
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
