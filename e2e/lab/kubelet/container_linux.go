package kubelet

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container is one running (or exited) container process of a pod.
type container struct {
	spec         corev1.Container
	cmd          *exec.Cmd
	exited       chan struct{} // closed when the current process ends
	started      time.Time
	restarts     int32
	lastExit     *corev1.ContainerStateTerminated
	running      bool
	ready        bool
	nextStart    time.Time // restart backoff
	liveFails    int32
	readyOK      int32
	lastProbe    time.Time
	lastLive     time.Time
	waitReason   string
	waitMessage  string
	terminated   *corev1.ContainerStateTerminated
	lastExitCode int
	// memCgroup is the container's memory cgroup when it has a memory limit (limits_linux.go),
	// and oomKills the OOM kills counted there as of the last start or exit.
	memCgroup string
	oomKills  int64
	// cgroups are the v1 cgroups the container runs in (its limits), and user and privs who it
	// runs as: an exec takes on all three.
	cgroups []string
	user    *User
	privs   Privileges
}

// start launches the container through `lab podinit` in a new mount namespace, in the pod's
// cgroup (CLONE_INTO_CGROUP, so it never runs outside it) and its own process group, its output
// going through a log shim (`lab containerlog`, logs.go) into logPath. It returns once podinit has
// made the container (mounts, namespaces, cgroups) and executed the program, so that nothing sees
// a container half made: exec joins the namespaces of its process.
func (c *container) start(labBin string, spec InitSpec, cgroupDir, logPath, marker string) error {
	execR, execW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer execR.Close()
	defer execW.Close() // on the early returns; closed right after the start otherwise
	spec.ExecFD = 3     // the first of ExtraFiles
	enc, err := EncodeInit(spec)
	if err != nil {
		return err
	}
	cg, err := os.Open(cgroupDir)
	if err != nil {
		return fmt.Errorf("open pod cgroup: %w", err)
	}
	defer cg.Close()
	stdout, stderr, err := startLogShim(labBin, logPath, marker)
	if err != nil {
		return fmt.Errorf("container %s log: %w", c.spec.Name, err)
	}
	defer stdout.Close()
	defer stderr.Close()
	cmd := exec.Command(labBin, "podinit")
	cmd.Env = []string{InitEnv + "=" + enc, marker}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.ExtraFiles = []*os.File{execW}
	flags := uintptr(syscall.CLONE_NEWNS)
	if spec.Hostname != "" {
		flags |= syscall.CLONE_NEWUTS
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  flags,
		UseCgroupFD: true,
		CgroupFD:    int(cg.Fd()),
		Setpgid:     true,
		Pdeathsig:   0, // pods outlive a kubelet restart, as with a real runtime
	}
	err = cmd.Start()
	execW.Close()
	if err != nil {
		return fmt.Errorf("start container %s: %w", c.spec.Name, err)
	}
	// EOF when the program replaced podinit, or podinit failed (its exit is reaped as usual).
	_ = execR.SetReadDeadline(time.Now().Add(execWait))
	if _, err := io.Copy(io.Discard, execR); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return fmt.Errorf("start container %s: podinit did not execute the program within %v: %w", c.spec.Name, execWait, err)
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	c.started = time.Now()
	c.running, c.ready = true, false
	c.liveFails, c.readyOK = 0, 0
	c.waitReason, c.waitMessage = "", ""
	c.terminated = nil
	done := c.exited
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// startLogShim starts the process that writes a container's output to its log file and returns
// the write ends of the container's stdout and stderr. The shim runs in its own process group,
// outside the pod's cgroup, and ends when both pipes are closed by everything that holds them.
func startLogShim(labBin, logPath, marker string) (stdout, stderr *os.File, err error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return nil, nil, err
	}
	defer errR.Close()
	cmd := exec.Command(labBin, "containerlog", "--max-size", strconv.Itoa(DefaultLogMaxSize),
		"--max-files", strconv.Itoa(DefaultLogMaxFiles), logPath)
	cmd.Env = []string{marker}
	cmd.Stdin, cmd.Stderr = outR, os.Stderr // the shim's own complaints go to the kubelet's log
	cmd.ExtraFiles = []*os.File{errR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		outW.Close()
		errW.Close()
		return nil, nil, err
	}
	go func() { _ = cmd.Wait() }()
	return outW, errW, nil
}

// execWait bounds the time podinit may take to make a container.
const execWait = 10 * time.Second

// reap records the exit of a process that ended; it reports whether one did.
func (c *container) reap() bool {
	if !c.running {
		return false
	}
	select {
	case <-c.exited:
	default:
		return false
	}
	c.running, c.ready = false, false
	code := 0
	reason := "Completed"
	if ps := c.cmd.ProcessState; ps != nil {
		code = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	if code != 0 {
		reason = "Error"
	}
	if code == 128+int(syscall.SIGKILL) && c.memCgroup != "" {
		if n, err := oomKills(c.memCgroup); err == nil && n > c.oomKills {
			reason, c.oomKills = "OOMKilled", n
		}
	}
	c.lastExitCode = code
	c.terminated = &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason,
		StartedAt: metav1.NewTime(c.started), FinishedAt: metav1.Now(),
	}
	c.lastExit = c.terminated
	return true
}

// signal sends sig to the container's process group.
func (c *container) signal(sig syscall.Signal) {
	if c.running && c.cmd != nil && c.cmd.Process != nil {
		_ = syscall.Kill(-c.cmd.Process.Pid, sig)
	}
}

func (c *container) shouldRestart(policy corev1.RestartPolicy) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return c.lastExitCode != 0
	default:
		return true
	}
}

// backoff is the delay before restart n: 1s, 2s, 4s … capped at 30s.
func backoff(n int32) time.Duration {
	d := time.Second << min(n, 5)
	return min(d, 30*time.Second)
}
