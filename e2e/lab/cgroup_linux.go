package lab

import (
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
