package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// daemon is a long-running process the lab starts.
type daemon struct {
	Name  string   // log file name and pid file name
	Netns string   // network namespace to run in ("" = the caller's)
	Argv  []string // program and arguments
	Env   []string // extra environment
}

// start launches d detached from the caller (own session), logging to logDir/<name>.log, and
// marks it with the lab's environment marker so that Down can find it after a crash.
func (d daemon) start(root, logDir string) (int, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(logDir, d.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	argv := d.Argv
	if d.Netns != "" {
		// nsenter joins only the network namespace: the daemon shares the host's mount namespace,
		// so namespaces it creates (ip netns add) are visible to the host and to Down.
		argv = append([]string{"nsenter", "--net=/run/netns/" + d.Netns, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(append(os.Environ(), EnvMarker+"="+root), d.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", d.Name, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return pid, nil
}

// labProcesses returns the PIDs of processes whose environment carries the marker for root.
func labProcesses(root string) []int {
	want := []byte(EnvMarker + "=" + root + "\x00")
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		if bytes.Contains(append(env, 0), want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stopProcesses sends SIGTERM to the lab's processes, then SIGKILL to those left after grace.
func stopProcesses(root string, grace time.Duration) []int {
	pids := labProcesses(root)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(labProcesses(root)) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	left := labProcesses(root)
	for _, p := range left {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && len(labProcesses(root)) > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	return labProcesses(root)
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// the state follows the parenthesised command name
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}
