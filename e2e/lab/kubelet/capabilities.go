package kubelet

// Capabilities, as a container runtime grants them: a privileged container keeps every
// capability; any other gets the runtime's default set (containerd's and CRI-O's) plus
// securityContext.capabilities.add minus .drop ("ALL" names every one), as its bounding set. A
// root program starts with that set; a non-root one with none (its user change clears them), as
// on a real node. allowPrivilegeEscalation: false sets no_new_privs. Exec'd commands get the same.

import (
	"fmt"
	"math/bits"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// capNames maps capability names (without CAP_) to their numbers.
var capNames = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "KILL": unix.CAP_KILL, "SETGID": unix.CAP_SETGID,
	"SETUID": unix.CAP_SETUID, "SETPCAP": unix.CAP_SETPCAP, "LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_BROADCAST": unix.CAP_NET_BROADCAST,
	"NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW, "IPC_LOCK": unix.CAP_IPC_LOCK,
	"IPC_OWNER": unix.CAP_IPC_OWNER, "SYS_MODULE": unix.CAP_SYS_MODULE, "SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"SYS_CHROOT": unix.CAP_SYS_CHROOT, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_PACCT": unix.CAP_SYS_PACCT,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_BOOT": unix.CAP_SYS_BOOT, "SYS_NICE": unix.CAP_SYS_NICE,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "SYS_TIME": unix.CAP_SYS_TIME, "SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
	"MKNOD": unix.CAP_MKNOD, "LEASE": unix.CAP_LEASE, "AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "SETFCAP": unix.CAP_SETFCAP, "MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE,
	"MAC_ADMIN": unix.CAP_MAC_ADMIN, "SYSLOG": unix.CAP_SYSLOG, "WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "AUDIT_READ": unix.CAP_AUDIT_READ, "PERFMON": unix.CAP_PERFMON,
	"BPF": unix.CAP_BPF, "CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// defaultCaps is the container runtimes' default set.
var defaultCaps = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

const allCaps = "ALL"

// Privileges are a container's capability bounding set and no_new_privs.
type Privileges struct {
	// Bounding is the capability bounding set as a bit mask; nil keeps every capability
	// (a privileged container).
	Bounding   *uint64 `json:"bounding,omitempty"`
	NoNewPrivs bool    `json:"noNewPrivs,omitempty"`
}

// containerPrivileges computes a container's privileges from its securityContext, refusing
// capability names it does not know (as runtimes do).
func containerPrivileges(c *corev1.Container) (Privileges, error) {
	sc := c.SecurityContext
	var p Privileges
	if sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		p.NoNewPrivs = true
	}
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return p, nil
	}
	set := uint64(0)
	apply := func(names []corev1.Capability, add bool) error {
		for _, n := range names {
			name := strings.TrimPrefix(strings.ToUpper(string(n)), "CAP_")
			var mask uint64
			if name == allCaps {
				mask = ^uint64(0)
			} else if num, ok := capNames[name]; ok {
				mask = 1 << num
			} else {
				return fmt.Errorf("unknown capability %q", n)
			}
			if add {
				set |= mask
			} else {
				set &^= mask
			}
		}
		return nil
	}
	for _, n := range defaultCaps {
		set |= 1 << capNames[n]
	}
	if sc != nil && sc.Capabilities != nil {
		if err := apply(sc.Capabilities.Add, true); err != nil {
			return p, err
		}
		if err := apply(sc.Capabilities.Drop, false); err != nil {
			return p, err
		}
	}
	set &= 1<<(unix.CAP_LAST_CAP+1) - 1
	p.Bounding = &set
	return p, nil
}

// setprivArgs renders p as setpriv(1) options for an exec'd command.
func (p Privileges) setprivArgs() []string {
	var args []string
	if p.NoNewPrivs {
		args = append(args, "--no-new-privs")
	}
	if p.Bounding != nil {
		caps := []string{"-all"}
		for set := *p.Bounding; set != 0; set &= set - 1 {
			n := bits.TrailingZeros64(set)
			for name, num := range capNames {
				if num == n {
					caps = append(caps, "+"+strings.ToLower(name))
				}
			}
		}
		args = append(args, "--bounding-set="+strings.Join(caps, ","), "--inh-caps=-all")
	}
	return args
}

// limitBounding sets no_new_privs and drops what is outside the bounding set, on the calling
// thread (the one that executes the program). It comes before the user change, which still needs
// CAP_SETUID and CAP_SETGID whatever the container keeps.
func (p Privileges) limitBounding() error {
	if p.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	if p.Bounding == nil {
		return nil
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if *p.Bounding&(1<<c) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	return nil
}

// limitSets reduces the permitted and effective sets to the bounding set and empties the
// inheritable one, for a program that stays root (a non-root user's sets are already empty).
func (p Privileges) limitSets() error {
	if p.Bounding == nil {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range data {
		keep := uint32(*p.Bounding >> (32 * i))
		data[i].Permitted &= keep
		data[i].Effective &= keep
		data[i].Inheritable = 0
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}
