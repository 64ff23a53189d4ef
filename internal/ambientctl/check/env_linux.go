package check

// The real machine: its /proc, /sys and CNI directory, uname(2), and eBPF probes. Rules: a
// probe loads a minimal program and attaches it nowhere, so that checking a node never changes
// how its traffic flows; the probes' results are cached by cilium/ebpf for the process.

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultEnv returns the machine this process runs on.
func DefaultEnv() Env {
	return Env{
		ProcRoot:   "/proc",
		SysRoot:    "/sys",
		CNIConfDir: "/etc/cni/net.d",
		Uname:      uname,
		Probe:      probe,
	}
}

func uname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

func probe(h Hook) error {
	switch h {
	case HookCgroupSockAddr:
		// Probed with the connect4 attach type; the others of the design come with the same
		// kernel options, and getpeername4/6 (5.8) with an older kernel than tcx needs.
		return features.HaveProgramType(ebpf.CGroupSockAddr)
	case HookSockOps:
		return features.HaveProgramType(ebpf.SockOps)
	case HookSkLookup:
		return features.HaveProgramType(ebpf.SkLookup)
	case HookTCX:
		return probeTCX()
	}
	return fmt.Errorf("no probe for hook %q", h)
}

// probeTCX asks the kernel to attach a tcx link to an interface that does not exist. A kernel
// that knows tcx links answers ENODEV; for one that does not, link.AttachTCX returns
// ebpf.ErrNotSupported from its own probe. features has no public probe for tcx.
func probeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // TCX_PASS
	})
	if err != nil {
		return fmt.Errorf("load sched_cls program: %w", err)
	}
	defer prog.Close()
	// No interface has this index; were there one, the program passes every packet and the
	// link is closed at once.
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	switch {
	case err == nil:
		return l.Close()
	case errors.Is(err, unix.ENODEV):
		return nil
	}
	return err
}
