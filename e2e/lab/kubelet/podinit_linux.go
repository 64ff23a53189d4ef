package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// InitEnv carries the InitSpec to `lab podinit` in its environment.
const InitEnv = "AMBIENT_LAB_PODINIT"

// Mount is one bind mount into a pod's mount namespace.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// InitSpec is what a container process is started from. `lab podinit` runs in a fresh mount
// namespace (the kubelet clones it so), makes the pod's mounts, joins the pod's network
// namespace and execs the program: the program starts with everything in place.
type InitSpec struct {
	Netns  string   `json:"netns,omitempty"` // path; empty for hostNetwork pods
	Mounts []Mount  `json:"mounts,omitempty"`
	Dir    string   `json:"dir,omitempty"`
	Argv   []string `json:"argv"`
	Env    []string `json:"env"`
	// Hostname is set in the container's own UTS namespace (the kubelet clones one when it is
	// not empty).
	Hostname string `json:"hostname,omitempty"`
	// Cgroups are cgroup directories outside the unified hierarchy the kubelet clones the process
	// into (the v1 memory and cpu cgroups of a container with limits) that podinit joins before
	// anything else, so that everything the container does is accounted there.
	Cgroups []string `json:"cgroups,omitempty"`
	// ExecFD is an inherited pipe that podinit marks close-on-exec: the kubelet reads its end to
	// EOF, which comes when the program has replaced podinit (everything in place) or podinit
	// failed. 0 for none.
	ExecFD int `json:"execFD,omitempty"`
	// User, when set, is who the program runs as (securityContext.runAsUser/runAsGroup and the
	// pod's supplemental groups); the container is made as root first.
	User *User `json:"user,omitempty"`
	// Privileges are the container's capabilities and no_new_privs (capabilities.go).
	Privileges Privileges `json:"privileges,omitempty"`
	// CreatedLog is a file to which podinit appends every directory or file it had to create on
	// the host's file system as a mount target, so that lab down can remove them once no pod
	// runs (removing them earlier would detach other pods' mounts on them).
	CreatedLog string `json:"createdLog,omitempty"`
}

// User is a process's identity.
type User struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}

// PodInit performs spec and never returns on success.
func PodInit(spec InitSpec) error {
	if len(spec.Argv) == 0 {
		return errors.New("podinit: no program")
	}
	if spec.ExecFD > 0 {
		unix.CloseOnExec(spec.ExecFD)
	}
	for _, dir := range spec.Cgroups {
		// "0" is the writing process: podinit, and the program it becomes.
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0); err != nil {
			return fmt.Errorf("podinit: join cgroup %s: %w", dir, err)
		}
	}
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("podinit: hostname: %w", err)
		}
	}
	runtime.LockOSThread() // setns and exec must happen on the same thread
	// Keep the pod's mounts to itself; the host's later mounts still reach the pod.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("podinit: make mounts slave: %w", err)
	}
	for _, m := range spec.Mounts {
		if err := bindMount(m, spec.CreatedLog); err != nil {
			return fmt.Errorf("podinit: mount %s: %w", m.Target, err)
		}
	}
	if spec.Netns != "" {
		fd, err := unix.Open(spec.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("podinit: open netns: %w", err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("podinit: setns %s: %w", spec.Netns, err)
		}
		unix.Close(fd)
	}
	if spec.Dir != "" {
		if err := os.Chdir(spec.Dir); err != nil {
			return fmt.Errorf("podinit: workdir: %w", err)
		}
	}
	if err := spec.Privileges.limitBounding(); err != nil {
		return fmt.Errorf("podinit: %w", err)
	}
	if u := spec.User; u != nil {
		// On this (locked) thread only, which is the one that executes the program: the
		// program starts with these credentials, and a non-root user keeps no capability.
		if err := unix.Setgroups(u.Groups); err != nil {
			return fmt.Errorf("podinit: groups %v: %w", u.Groups, err)
		}
		if err := unix.Setresgid(u.GID, u.GID, u.GID); err != nil {
			return fmt.Errorf("podinit: gid %d: %w", u.GID, err)
		}
		if err := unix.Setresuid(u.UID, u.UID, u.UID); err != nil {
			return fmt.Errorf("podinit: uid %d: %w", u.UID, err)
		}
	}
	if spec.User == nil || spec.User.UID == 0 {
		if err := spec.Privileges.limitSets(); err != nil {
			return fmt.Errorf("podinit: %w", err)
		}
	}
	return unix.Exec(spec.Argv[0], spec.Argv, spec.Env)
}

func bindMount(m Mount, createdLog string) error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return err
	}
	// The target may not exist on the host (/var/run/secrets/...); create it, and record what
	// was created. Paths made here stay empty on the host: the bind is in the pod's namespace.
	dir := m.Target
	if !st.IsDir() {
		dir = filepath.Dir(m.Target)
	}
	if err := mkdirAllLogged(dir, createdLog); err != nil {
		return err
	}
	if !st.IsDir() {
		if _, err := os.Stat(m.Target); errors.Is(err, os.ErrNotExist) {
			f, err := os.OpenFile(m.Target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			f.Close()
			logCreated(createdLog, m.Target)
		}
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if m.ReadOnly {
		return unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
	return nil
}

// EncodeInit renders spec for InitEnv.
func EncodeInit(spec InitSpec) (string, error) {
	b, err := json.Marshal(spec)
	return string(b), err
}

// DecodeInit parses InitEnv.
func DecodeInit(s string) (InitSpec, error) {
	var spec InitSpec
	err := json.Unmarshal([]byte(s), &spec)
	return spec, err
}

// mkdirAllLogged is os.MkdirAll that records each directory it creates.
func mkdirAllLogged(dir, createdLog string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllLogged(parent, createdLog); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	logCreated(createdLog, dir)
	return nil
}

func logCreated(createdLog, path string) {
	if createdLog == "" {
		return
	}
	// One short O_APPEND write per path: concurrent pods do not interleave within a line.
	f, err := os.OpenFile(createdLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(path + "\n")
}

// RemoveCreated removes, deepest first, the paths recorded in createdLog that are still empty,
// then the log itself. Call it only when no pod runs.
func RemoveCreated(createdLog string) error {
	b, err := os.ReadFile(createdLog)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	paths := strings.Split(strings.TrimSpace(string(b)), "\n")
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && (st.IsDir() || st.Size() == 0) {
			_ = os.Remove(p) // fails, and keeps the path, if something was put there since
		}
	}
	return os.Remove(createdLog)
}
