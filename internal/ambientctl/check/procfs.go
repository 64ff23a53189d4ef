package check

// The two /proc/self files the checks read: mountinfo (which file systems are mounted where)
// and status (effective uid and capabilities). Rules: the parsers take a path, so tests point
// them at a fake /proc; they keep only the fields the checks use; a line they cannot read is
// skipped, not an error, since the kernel adds fields over time.
//
// This is one more reader of mountinfo beside redirect.FindCgroup2, internal/memlimit and
// e2e/lab: FindCgroup2 reads only the real /proc and answers only for cgroup2, while the bpffs
// check needs the file system at a given point; memlimit's reader is private and answers which
// mount shows a cgroup. A shared internal/mountinfo package would let all of them go.

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// mount is one visible mount: the top one at its mount point.
type mount struct {
	point  string // as mountinfo writes it (octal escapes kept: the points checked have none)
	fstype string
}

// readMountinfo returns the mounts of a mountinfo file in the order their mount points first
// appear. Of several mounts at one point only the last (on top) is kept.
func readMountinfo(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	at := map[string]int{} // mount point -> index in out
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		m := mount{point: fields[4], fstype: fields[sep+1]}
		if i, ok := at[m.point]; ok {
			out[i] = m
			continue
		}
		at[m.point] = len(out)
		out = append(out, m)
	}
	return out, sc.Err()
}

// Capability bits, from linux/capability.h (x/sys/unix has them only on Linux).
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

// status is what the checks use of /proc/self/status.
type status struct {
	euid   int
	capEff uint64
}

func (s status) has(capability uint) bool { return s.capEff&(1<<capability) != 0 }

// canLoadNetPrograms reports whether the kernel lets this process load the program types the
// design uses (cgroup_sock_addr, sock_ops, sk_lookup, sched_cls): bpf_capable() and
// bpf_net_capable() in kernel/bpf/syscall.c, which CAP_SYS_ADMIN satisfies alone.
func (s status) canLoadNetPrograms() bool {
	return s.has(capSysAdmin) || s.has(capBPF) && s.has(capNetAdmin)
}

// readStatus reads the effective uid and capabilities of a /proc/<pid>/status file.
func readStatus(path string) (status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return status{}, err
	}
	st := status{euid: -1}
	for line := range strings.Lines(string(b)) {
		key, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		switch {
		case key == "Uid" && len(f) >= 2: // real, effective, saved, file system
			if n, err := strconv.Atoi(f[1]); err == nil {
				st.euid = n
			}
		case key == "CapEff" && len(f) == 1:
			if n, err := strconv.ParseUint(f[0], 16, 64); err == nil {
				st.capEff = n
			}
		}
	}
	return st, nil
}
