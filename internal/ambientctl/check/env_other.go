//go:build !linux

package check

// Off Linux there is no node to check: DefaultEnv keeps the paths so that the file checks
// report what is missing, and the kernel and eBPF checks fail saying why.

import (
	"fmt"
	"runtime"
)

var errNotLinux = fmt.Errorf("ambientctl check runs on a Linux node, not %s", runtime.GOOS)

// DefaultEnv returns the machine this process runs on.
func DefaultEnv() Env {
	return Env{
		ProcRoot:   "/proc",
		SysRoot:    "/sys",
		CNIConfDir: "/etc/cni/net.d",
		Uname:      func() (string, error) { return "", errNotLinux },
		Probe:      func(Hook) error { return errNotLinux },
	}
}
