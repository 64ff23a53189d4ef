package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ambient-mesh/ambient/e2e/lab/kubelet"
)

// Down stops every process the lab started and removes every namespace, link and cgroup it
// created. It is idempotent and works after a crash: it finds the lab's processes by their
// environment marker and its namespaces and links by their names, not from saved state.
func Down(cfg Config, log *slog.Logger) error {
	var errs []error
	if left := stopProcesses(cfg.Root, 10*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still running: %v", left))
	}
	// Pod mounts (volumes) live in the pods' own mount namespaces and went away with them; the
	// empty mount targets pods created on the host go now that no pod runs.
	if err := kubelet.RemoveCreated(cfg.CreatedLog()); err != nil {
		errs = append(errs, fmt.Errorf("remove pods' mount targets: %w", err))
	}
	errs = append(errs, teardownNetwork()...)
	if cg, err := LabCgroup(); err == nil {
		if err := kubelet.RemoveCgroupTree(cg); err != nil {
			errs = append(errs, fmt.Errorf("remove lab cgroups: %w", err))
		}
		// The containers' memory and cpu cgroups (kubelet/limits_linux.go).
		for _, ctl := range []string{"memory", "cpu"} {
			if dir, err := kubelet.CgroupV1(ctl, cg); err == nil && dir != "" {
				if err := kubelet.RemoveCgroupTree(dir); err != nil {
					errs = append(errs, fmt.Errorf("remove lab %s cgroups: %w", ctl, err))
				}
			}
		}
	}
	st := cfg.StateDir()
	// The nodes' bpffs instances are mounted in the node roots; removing the roots while they
	// are mounted would empty the instances (harmless) and then fail, so detach them first, and
	// leave the node roots in place if that fails rather than remove through a mount.
	if err := unmountUnder(st); err != nil {
		errs = append(errs, fmt.Errorf("unmount node roots: %w", err))
		return errors.Join(errs...)
	}
	for _, d := range []string{"etcd", "pki", "nodes", "pods", "run", "kubeconfig", "controller-manager.conf", "scheduler.conf"} {
		if err := os.RemoveAll(filepath.Join(st, d)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("lab down")
	return nil
}
