package kubelet

// exec, attach and port-forward, as a container runtime does them for the kubelet API.
//
// An exec'd command is a sibling of the container's process: it joins that process's network,
// mount, UTS and IPC namespaces (nsenter), its working directory and environment (read from
// /proc), the pod's cgroup (cloned into it) and the container's limit cgroups, and runs as the
// container's user with its capabilities (setpriv). A command name that the container's image
// ships beside its entrypoint (imageCommands) is played by the image's program; any other is
// looked up among the lab's image programs first, then on the host's PATH. Attach gives the
// container's output from now on; the lab keeps no container's stdin open, so attach carries no
// input. Port-forward dials localhost:<port> inside the pod's network namespace.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/ambient-mesh/ambient/redirect"
)

// executor runs exec and attach requests against one pod's published view.
type executor struct {
	k *Kubelet
	v *podView
}

func (e executor) running(container string) (ctrView, error) {
	c, ok := e.v.container(container)
	if !ok {
		return c, fmt.Errorf("container %s is not valid for pod %s/%s", container, e.v.Namespace, e.v.Name)
	}
	if c.PID == 0 {
		return c, fmt.Errorf("container %s of pod %s/%s is not running", container, e.v.Namespace, e.v.Name)
	}
	return c, nil
}

// ExecInContainer runs cmd in the container and returns a utilexec.ExitError for a non-zero exit.
func (e executor) ExecInContainer(ctx context.Context, _, _, container string, cmd []string, in io.Reader, out, errw io.WriteCloser,
	tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	c, err := e.running(container)
	if err != nil {
		return err
	}
	prog, progArgs, err := e.k.execCommand(c.Image, cmd)
	if err != nil {
		return err
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.PID))
	if err != nil {
		return fmt.Errorf("container %s environment: %w", container, err)
	}
	// nsenter joins the namespaces; setpriv (both util-linux) takes on the container's user
	// and privileges, and executes the program.
	args := []string{"--target", strconv.Itoa(c.PID), "--net", "--mount", "--uts", "--ipc", "--wd", "--", "setpriv"}
	args = append(args, c.Privs.setprivArgs()...)
	if u := c.User; u != nil {
		args = append(args, "--reuid="+strconv.Itoa(u.UID), "--regid="+strconv.Itoa(u.GID))
		if len(u.Groups) == 0 {
			args = append(args, "--clear-groups")
		} else {
			g := make([]string, len(u.Groups))
			for i, n := range u.Groups {
				g[i] = strconv.Itoa(n)
			}
			args = append(args, "--groups="+strings.Join(g, ","))
		}
	}
	args = append(append(args, "--", prog), progArgs...)
	x := exec.CommandContext(ctx, "nsenter", args...)
	x.Env = strings.Split(strings.TrimRight(string(env), "\x00"), "\x00")
	cg, err := os.Open(e.v.Cgroup)
	if err != nil {
		return fmt.Errorf("pod cgroup: %w", err)
	}
	defer cg.Close()
	x.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	x.WaitDelay = time.Second
	if tty {
		x.Env = append(x.Env, "TERM=xterm")
		err = runTTY(ctx, x, c, in, out, resize)
	} else {
		err = runPipes(x, c, in, out, errw)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

// start starts x and moves it into the container's limit cgroups before it can start anything
// (nsenter does not fork: the command keeps its pid).
func start(x *exec.Cmd, c ctrView) error {
	if err := x.Start(); err != nil {
		return err
	}
	for _, dir := range c.Cgroups {
		if err := os.WriteFile(dir+"/cgroup.procs", []byte(strconv.Itoa(x.Process.Pid)), 0o644); err != nil {
			_ = x.Process.Kill()
			_ = x.Wait()
			return fmt.Errorf("join container cgroup: %w", err)
		}
	}
	return nil
}

func runPipes(x *exec.Cmd, c ctrView, in io.Reader, out, errw io.Writer) error {
	x.Stdout, x.Stderr = out, errw
	if in != nil {
		// Not x.Stdin: Wait would wait for the client to close its stdin after the command
		// ended. The pipe is closed by Wait, which ends the copy.
		stdin, err := x.StdinPipe()
		if err != nil {
			return err
		}
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	if err := start(x, c); err != nil {
		return err
	}
	return x.Wait()
}

func runTTY(ctx context.Context, x *exec.Cmd, c ctrView, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return err
	}
	defer ptmx.Close()
	x.Stdin, x.Stdout, x.Stderr = tty, tty, tty
	x.SysProcAttr.Setsid, x.SysProcAttr.Setctty, x.SysProcAttr.Ctty = true, true, 0
	err = start(x, c)
	tty.Close()
	if err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sz, ok := <-resize:
				if !ok {
					return
				}
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: sz.Height, Cols: sz.Width})
			}
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(ptmx, in) }()
	}
	copied := make(chan struct{})
	go func() {
		// Ends with EIO once every holder of the terminal has closed it.
		if out != nil {
			_, _ = io.Copy(out, ptmx)
		} else {
			_, _ = io.Copy(io.Discard, ptmx)
		}
		close(copied)
	}()
	err = x.Wait()
	select {
	case <-copied:
	case <-ctx.Done():
	}
	return err
}

// imageCommands are the commands that an image ships beside its entrypoint, by the image's
// program name (ImageProgram), which plays each one when it is given the command's name as its
// first argument. Istio's echo image (echo-advanced, which the Gateway API conformance suite's
// mesh tests deploy and exec `client …` in) has its client beside the server; bin/client is
// another program, the lab's own client.
var imageCommands = map[string][]string{"echo-advanced": {"client"}}

// execCommand returns the program and its arguments for an exec of cmd in a container of image:
// the image's program with all of cmd when cmd[0] is a bare name the image ships
// (imageCommands), else cmd[0] resolved as resolveCommand does with the rest of cmd.
func (k *Kubelet) execCommand(image string, cmd []string) (string, []string, error) {
	if len(cmd) == 0 {
		return "", nil, errors.New("exec: no command")
	}
	if !strings.Contains(cmd[0], "/") {
		if p, err := ImageProgram(".", image); err == nil && slices.Contains(imageCommands[filepath.Base(p)], cmd[0]) {
			prog, err := findProgram(k.cfg.BinDir, image)
			if err != nil {
				return "", nil, fmt.Errorf("exec: %q: %w", cmd[0], err)
			}
			return prog, cmd, nil
		}
	}
	prog, err := k.resolveCommand(cmd[0])
	if err != nil {
		return "", nil, err
	}
	return prog, cmd[1:], nil
}

// resolveCommand finds the program for a command name: a path as it is, else the lab's image
// programs, else the host's PATH.
func (k *Kubelet) resolveCommand(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	if !strings.ContainsAny(name, ":@") {
		if p, err := findProgram(k.cfg.BinDir, name); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("exec: %q: executable file not found in the image programs or $PATH", name)
	}
	return p, nil
}

// AttachContainer streams the container's output from now on until it ends or the client leaves.
func (e executor) AttachContainer(ctx context.Context, _, _, container string, _ io.Reader, out, errw io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize) error {
	c, err := e.running(container)
	if err != nil {
		return err
	}
	o := LogOptions{Follow: true, TailLines: -1, Since: time.Now()}
	if out != nil {
		o.Stdout = out
	}
	if errw != nil {
		o.Stderr = errw
	}
	running := func() bool {
		v := e.k.lookup(e.v.Namespace, e.v.Name, e.v.UID)
		if v == nil {
			return false
		}
		cur, ok := v.container(container)
		return ok && cur.PID == c.PID
	}
	return ReadLogs(ctx, containerLogPath(e.v.Dir, container, c.Restarts), o, running)
}

// forwarder carries port-forward streams into one pod.
type forwarder struct{ v *podView }

// PortForward copies between stream and a connection to localhost:port in the pod.
func (f forwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	addr := net.JoinHostPort("localhost", strconv.Itoa(int(port)))
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		return d.DialContext(ctx, "tcp", addr)
	}
	var conn net.Conn
	var err error
	if f.v.Netns == "" {
		conn, err = dial() // hostNetwork: the kubelet's own namespace is the node's
	} else {
		ns, oerr := os.Open(f.v.Netns)
		if oerr != nil {
			return fmt.Errorf("pod %s/%s network namespace: %w", f.v.Namespace, f.v.Name, oerr)
		}
		conn, err = redirect.InNetNS(int(ns.Fd()), dial)
		ns.Close()
	}
	if err != nil {
		return fmt.Errorf("port-forward to pod %s/%s port %d: %w", f.v.Namespace, f.v.Name, port, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the client is done sending: pass the half-close on
		}
	}()
	// The exchange ends when the pod's side closes (or the port-forward session does).
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(stream, conn)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
