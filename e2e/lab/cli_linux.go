package lab

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-mesh/ambient/e2e/lab/kubelet"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const usage = `usage: lab <command> [flags]
  up [--nodes N]                 start the lab (builds the Kubernetes binaries on first use)
  down                           stop the lab and remove everything it created
  status                         show the control plane, nodes and pods
  exec <ns>/<pod> -- <cmd...>    run a command in the pod's network namespace and cgroup
  logs <ns>/<pod> [-c container] [-f] [--previous]
                                 print a container's log (kubectl logs, without kubectl)
  nodeview --root DIR --cgroup DIR -- <cmd...>
                                 run a command in a node's view of the file system (as CNI
                                 plugins run), in a new mount namespace
`

// Command runs the lab CLI and returns the process exit code.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "lab")
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "up":
		err = cmdUp(ctx, args[1:], log)
	case "down":
		err = cmdDown(log)
	case "status":
		err = cmdStatus(ctx, stdout)
	case "exec":
		return cmdExec(ctx, args[1:], stderr)
	case "kubelet":
		err = cmdKubelet(ctx, args[1:])
	case "nodeview":
		return cmdNodeView(args[1:], stderr)
	case "logs":
		err = cmdLogs(ctx, args[1:], stdout, stderr)
	case "containerlog":
		err = cmdContainerLog(args[1:])
	case "podinit":
		spec, derr := kubelet.DecodeInit(os.Getenv(kubelet.InitEnv))
		if derr != nil {
			err = fmt.Errorf("podinit spec: %w", derr)
		} else {
			err = kubelet.PodInit(spec) // returns only on failure
		}
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "lab:", err)
		return 1
	}
	return 0
}

func repoConfig() (Config, error) {
	wd, err := os.Getwd()
	if err != nil {
		return Config{}, err
	}
	root, err := FindRoot(wd)
	if err != nil {
		// bin/lab may be run from anywhere: fall back to the binary's repository.
		if exe, eerr := os.Executable(); eerr == nil {
			root, err = FindRoot(filepath.Dir(exe))
		}
		if err != nil {
			return Config{}, err
		}
	}
	return Default(root), nil
}

// BuildTools builds (or finds in the cache) the lab's third-party binaries.
func BuildTools(root string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "e2e", "tools", "build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build lab tools: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func cmdUp(ctx context.Context, args []string, log *slog.Logger) error {
	cfg, err := repoConfig()
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "number of nodes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.ToolsDir, err = BuildTools(cfg.Root); err != nil {
		return err
	}
	return Up(ctx, cfg, log)
}

func cmdDown(log *slog.Logger) error {
	cfg, err := repoConfig()
	if err != nil {
		return err
	}
	return Down(cfg, log)
}

func cmdStatus(ctx context.Context, w io.Writer) error {
	cfg, err := repoConfig()
	if err != nil {
		return err
	}
	procs := len(labProcesses(cfg.Root))
	if !apiserverHealthy(cfg) {
		fmt.Fprintf(w, "lab: down (api server not answering; %d lab processes, %d lab namespaces)\n", procs, len(labNetns()))
		return nil
	}
	cs, err := Client(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "lab: up  api server https://%s:%d  kubeconfig %s  processes %d\n", APIServerIP, APIPort, cfg.Kubeconfig(), procs)
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	perNode := map[string]int{}
	for _, p := range pods.Items {
		perNode[p.Spec.NodeName]++
	}
	for _, n := range nodes.Items {
		ready := "NotReady"
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = "Ready"
			}
		}
		fmt.Fprintf(w, "node %-8s %-8s podCIDR %-15s pods %d\n", n.Name, ready, n.Spec.PodCIDR, perNode[n.Name])
	}
	return nil
}

// cmdExec runs a command in a pod's network namespace and cgroup, passing the exit code through.
func cmdExec(ctx context.Context, args []string, stderr io.Writer) int {
	sep := -1
	for i, a := range args {
		if a == "--" {
			sep = i
			break
		}
	}
	if sep != 1 || len(args) < 3 || !strings.Contains(args[0], "/") {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ns, name, _ := strings.Cut(args[0], "/")
	cfg, err := repoConfig()
	if err != nil {
		fmt.Fprintln(stderr, "lab:", err)
		return 1
	}
	cmd, err := ExecCommand(ctx, cfg, ns, name, args[2:]...)
	if err != nil {
		fmt.Fprintln(stderr, "lab:", err)
		return 1
	}
	return runAttached(cmd, stderr)
}

// runAttached runs cmd on this process's stdio and returns its exit code.
func runAttached(cmd *exec.Cmd, stderr io.Writer) int {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintln(stderr, "lab:", err)
		return 1
	}
	return 0
}

// ExecCommand prepares argv to run in the pod's network namespace, cgroup and mount namespace.
func ExecCommand(ctx context.Context, cfg Config, ns, name string, argv ...string) (*exec.Cmd, error) {
	cs, err := Client(cfg)
	if err != nil {
		return nil, err
	}
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	netns := kubelet.NetnsPrefix + string(pod.UID)
	if pod.Spec.HostNetwork {
		netns = NodeNetnsPref + strings.TrimPrefix(pod.Spec.NodeName, "node-")
	}
	if _, err := os.Stat("/run/netns/" + netns); err != nil {
		return nil, fmt.Errorf("pod %s/%s has no network namespace on this lab (not running?)", ns, name)
	}
	cgParent, err := LabCgroup()
	if err != nil {
		return nil, err
	}
	cg, err := os.Open(filepath.Join(cgParent, pod.Spec.NodeName, string(pod.UID)))
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s cgroup: %w", ns, name, err)
	}
	// Join the mount and UTS namespaces of a process of the pod too, when one runs, so that the
	// command sees the pod's volumes, token, resolv.conf and hostname as the pod's own processes do.
	nsArgs := []string{"--net=/run/netns/" + netns}
	if procs, err := os.ReadFile(filepath.Join(cgParent, pod.Spec.NodeName, string(pod.UID), "cgroup.procs")); err == nil {
		if f := strings.Fields(string(procs)); len(f) > 0 {
			nsArgs = append(nsArgs, "--mount=/proc/"+f[0]+"/ns/mnt", "--uts=/proc/"+f[0]+"/ns/uts")
		}
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(append(nsArgs, "--"), argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	// The fd must stay open until the child is cloned; it is closed when ctx ends.
	cmd.WaitDelay = time.Second
	go func() { <-ctx.Done(); cg.Close() }()
	return cmd, nil
}

// Exec runs argv in the pod and returns its combined output.
func Exec(ctx context.Context, cfg Config, ns, name string, argv ...string) (string, error) {
	cmd, err := ExecCommand(ctx, cfg, ns, name, argv...)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

func cmdKubelet(ctx context.Context, args []string) error {
	var c kubelet.Config
	var root string
	fs := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	fs.StringVar(&root, "root", "", "repository root")
	fs.StringVar(&c.Node, "node", "", "node name")
	fs.StringVar(&c.NodeIP, "node-ip", "", "node IP")
	fs.StringVar(&c.PodCIDR, "pod-cidr", "", "pod CIDR")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "", "CNI configuration directory")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", "", "CNI plugin directory")
	fs.StringVar(&c.StateDir, "state-dir", "", "node state directory")
	fs.StringVar(&c.NodeRoot, "node-root", "", "the node's root file system (hostPath volumes resolve under it)")
	fs.StringVar(&c.BinDir, "bin-dir", "", "directories (colon-separated) of the programs images map to")
	fs.StringVar(&c.ClusterDNS, "cluster-dns", ClusterDNSIP, "cluster DNS address")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "the kubelet API's serving certificate (none: no API)")
	fs.StringVar(&c.TLSKeyFile, "tls-private-key-file", "", "its key")
	fs.StringVar(&c.ClientCAFile, "client-ca-file", "", "the CA of the client certificates the API accepts")
	fs.IntVar(&c.ServerPort, "port", kubelet.DefaultServerPort, "the kubelet API's port")
	fs.DurationVar(&c.TokenMaxAge, "token-max-age", 0, "refresh projected service-account tokens at this age at the latest (0: 24h)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.Root, c.APIHost, c.APIPort, c.Domain = root, APIServerIP, fmt.Sprint(APIPort), "cluster.local"
	c.CreatedLog = Default(root).CreatedLog()
	cg, err := LabCgroup()
	if err != nil {
		return err
	}
	c.NodeCgroup = filepath.Join(cg, c.Node)
	k, err := kubelet.New(c, EnvMarker+"="+root, slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "kubelet", "node", c.Node))
	if err != nil {
		return err
	}
	return k.Run(ctx)
}

// cmdLogs prints a container's log through the API server, as kubectl logs does.
func cmdLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o corev1.PodLogOptions
	fs.StringVar(&o.Container, "c", "", "container (default: the pod's only or first one)")
	fs.BoolVar(&o.Follow, "f", false, "follow the log")
	fs.BoolVar(&o.Previous, "previous", false, "the log of the previous start")
	// Flags may come after the pod, as with kubectl.
	var target string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if target != "" {
			return errors.New("usage: lab logs <ns>/<pod> [-c container] [-f] [--previous]")
		}
		target, args = fs.Arg(0), fs.Args()[1:]
	}
	ns, name, ok := strings.Cut(target, "/")
	if !ok || ns == "" || name == "" {
		return errors.New("usage: lab logs <ns>/<pod> [-c container] [-f] [--previous]")
	}
	cfg, err := repoConfig()
	if err != nil {
		return err
	}
	cs, err := Client(cfg)
	if err != nil {
		return err
	}
	if o.Container == "" {
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		o.Container = pod.Spec.Containers[0].Name
	}
	r, err := cs.CoreV1().Pods(ns).GetLogs(name, &o).Stream(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(stdout, r)
	return err
}

// cmdContainerLog is a container's log shim: it writes its stdin (the container's stdout) and
// fd 3 (its stderr) to the log file until both end.
func cmdContainerLog(args []string) error {
	fs := flag.NewFlagSet("containerlog", flag.ContinueOnError)
	maxSize := fs.Int64("max-size", kubelet.DefaultLogMaxSize, "rotate the file at this size (bytes)")
	maxFiles := fs.Int("max-files", kubelet.DefaultLogMaxFiles, "files kept, the current one included")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: lab containerlog [--max-size N] [--max-files N] <path>")
	}
	// The shim outlives the kubelet that started it; only the closing of its pipes ends it.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	return kubelet.RunLogShim(fs.Arg(0), os.Stdin, os.NewFile(3, "stderr"), *maxSize, *maxFiles)
}

// cmdNodeView enters a node's view of the file system and execs the command. Run in the mount
// namespace of its parent (by hand, say, rather than by the kubelet, which clones it into a new
// one), it first re-executes itself in a new mount namespace: its mounts must never reach the host.
func cmdNodeView(args []string, stderr io.Writer) int {
	var v kubelet.NodeView
	fs := flag.NewFlagSet("nodeview", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&v.Root, "root", "", "the node root")
	fs.StringVar(&v.Cgroup, "cgroup", "", "the node's cgroup v2 directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if v.Root == "" || v.Cgroup == "" || fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	own, err1 := os.Readlink("/proc/self/ns/mnt")
	parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err1 != nil || err2 != nil || own == parent {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "lab:", err)
			return 1
		}
		cmd := exec.Command(self, append([]string{"nodeview"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
		return runAttached(cmd, stderr)
	}
	err := kubelet.EnterNodeView(v, fs.Args(), os.Environ()) // returns only on failure
	fmt.Fprintln(stderr, "lab:", err)
	return 1
}
