package lab

import (
	"fmt"
	"log/slog"
	"os"
	"syscall"
)

// LockFile is the machine-wide lock of lab users: the end-to-end tests, the benchmarks and the
// conformance run of every clone take it, so that one lab runs at a time.
const LockFile = "/run/ambient-lab.lock"

// Lock takes LockFile, waiting (and saying so) while another lab user holds it; unlock releases it.
func Lock(log *slog.Logger) (unlock func(), err error) {
	f, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log.Info("waiting for another lab user to finish", "lock", LockFile)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lab lock: %w", err)
		}
	}
	return func() { f.Close() }, nil
}
