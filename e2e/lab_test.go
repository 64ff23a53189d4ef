//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/e2e/lab/kubelet"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestLabPodsServicesAndDNS checks the lab as any cluster user would: pods on both nodes reach
// each other by IP, a Service gets EndpointSlices from the real controller manager and answers
// by name through CoreDNS and kube-proxy, and a deleted pod leaves no namespace or cgroup.
func TestLabPodsServicesAndDNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "lab")
	echoPods := deployEcho(t, cs, ns)
	if echoPods[0].Spec.NodeName == echoPods[1].Spec.NodeName {
		t.Fatalf("echo pods both on %s; want one per node", echoPods[0].Spec.NodeName)
	}
	clientBin := filepath.Join(labCfg.BinDir, "client")

	for _, p := range echoPods {
		out := execIn(t, ns, "client", clientBin, "http", "http://"+p.Status.PodIP+":8080/by-ip?q=1")
		var reply images.EchoReply
		if err := json.Unmarshal([]byte(out), &reply); err != nil {
			t.Fatalf("reply from %s: %v: %q", p.Name, err, out)
		}
		if reply.Pod != p.Name || reply.Namespace != ns || reply.Path != "/by-ip?q=1" || reply.ServiceAccount != "default" {
			t.Errorf("reply from %s = %+v", p.Name, reply)
		}
		if got := execIn(t, ns, "client", clientBin, "tcp", p.Status.PodIP+":9090", "hello "+p.Name); got != "hello "+p.Name {
			t.Errorf("tcp echo from %s = %q", p.Name, got)
		}
	}

	// A test process on the host reaches pods from a node's namespace.
	conn, err := lab.DialInNetns(ctx, lab.NodeAt(1).Netns, echoPods[1].Status.PodIP+":9090")
	if err != nil {
		t.Fatalf("dial from node-1's namespace: %v", err)
	}
	if _, err := conn.Write([]byte("from the host")); err != nil {
		t.Fatal(err)
	}
	_ = conn.(interface{ CloseWrite() error }).CloseWrite()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "from the host" {
		t.Errorf("echo through DialInNetns = %q, %v", b, err)
	}
	conn.Close()

	eventually(t, 30*time.Second, "EndpointSlice with both echo pods ready", func() bool {
		slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
		if err != nil {
			return false
		}
		ready := 0
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == 2
	})

	// By name: resolv.conf search path → CoreDNS → ClusterIP → kube-proxy → a pod.
	seen := map[string]bool{}
	eventually(t, 30*time.Second, "service by name reaches both echo pods", func() bool {
		cmd, err := lab.ExecCommand(ctx, labCfg, ns, "client", clientBin, "http", "http://echo."+ns+"/by-name")
		if err != nil {
			return false
		}
		out, err := cmd.Output()
		var reply images.EchoReply
		if err == nil && json.Unmarshal(out, &reply) == nil {
			seen[reply.Pod] = true
		}
		return len(seen) == 2
	})
	if got := execIn(t, ns, "client", clientBin, "tcp", "echo."+ns+".svc.cluster.local:9090", "via service"); got != "via service" {
		t.Errorf("tcp echo via service = %q", got)
	}

	// The lab CLI: lab exec passes the exit code through and runs in the pod's network namespace.
	out, err := exec.Command(filepath.Join(labCfg.BinDir, "lab"), "exec", ns+"/client", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace").CombinedOutput()
	if err != nil || string(out) != ns {
		t.Errorf("lab exec: service-account namespace file = %q, %v", out, err)
	}
	if err := exec.Command(filepath.Join(labCfg.BinDir, "lab"), "exec", ns+"/client", "--", "false").Run(); err == nil {
		t.Error("lab exec false: want non-zero exit")
	}

	// Deleting a pod stops it and removes its network namespace and cgroup.
	victim := echoPods[0]
	if err := cs.CoreV1().Pods(ns).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cg, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	netnsPath := "/run/netns/" + kubelet.NetnsPrefix + string(victim.UID)
	cgPath := filepath.Join(cg, victim.Spec.NodeName, string(victim.UID))
	eventually(t, 30*time.Second, "deleted pod gone with its netns and cgroup", func() bool {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
		_, nerr := os.Stat(netnsPath)
		_, cerr := os.Stat(cgPath)
		return apierrors.IsNotFound(err) && os.IsNotExist(nerr) && os.IsNotExist(cerr)
	})
}

func client(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := lab.Client(labCfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// newNamespace creates a namespace for one test and deletes it when the test ends.
func newNamespace(t testing.TB, cs kubernetes.Interface, prefix string) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

func apply(t testing.TB, ns string, manifest []byte) {
	t.Helper()
	cmd := kubectlCmd(context.Background(), "-n", ns, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(string(manifest))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
}

// kubectlCmd is the lab's kubectl (the real binary, built from its module) with args.
func kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, filepath.Join(labCfg.StateDir(), "bin", "kubectl"),
		append([]string{"--kubeconfig", labCfg.Kubeconfig()}, args...)...)
}

// execIn runs argv in the pod and returns its output; a failure fails the test.
func execIn(t testing.TB, ns, pod string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := lab.Exec(ctx, labCfg, ns, pod, argv...)
	if err != nil {
		t.Fatalf("exec in %s/%s %v: %v: %s", ns, pod, argv, err, out)
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestLabRestartsAndHostNetwork checks restartPolicy (a failing container is restarted with its
// exit recorded) and hostNetwork pods (they run in the node's namespace, with the node's IP).
func TestLabRestartsAndHostNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "restarts")
	apply(t, ns, []byte(`
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  restartPolicy: Always
  containers:
  - name: c
    image: ambient/client
    args: ["not-a-command"]
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: ambient/client
    args: ["not-a-command"]
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  hostNetwork: true
  nodeName: node-2
  containers:
  - name: echo
    image: ambient/echo
    args: ["-http=:18080", "-tcp=:19090"]
    readinessProbe:
      tcpSocket: {port: 19090}
      periodSeconds: 1
`))
	eventually(t, 60*time.Second, "crasher restarted with exit code 2 recorded", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "crasher", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		s := p.Status.ContainerStatuses[0]
		return s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode == 2
	})
	eventually(t, 30*time.Second, "restartPolicy Never pod Failed", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "once", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodFailed && p.Status.ContainerStatuses[0].RestartCount == 0
	})
	var hostIP string
	eventually(t, 30*time.Second, "hostNetwork pod ready with the node's IP", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "hostnet", metav1.GetOptions{})
		if err != nil || !podReady(p) {
			return false
		}
		hostIP = p.Status.PodIP
		return p.Status.PodIP == p.Status.HostIP
	})
	if hostIP != lab.NodeAt(2).IP.String() {
		t.Fatalf("hostNetwork pod IP %s, want node-2's %s", hostIP, lab.NodeAt(2).IP)
	}
	if got := execIn(t, ns, "hostnet", filepath.Join(labCfg.BinDir, "client"), "tcp", "127.0.0.1:19090", "on the node"); got != "on the node" {
		t.Errorf("tcp echo in the node's namespace = %q", got)
	}
}

// TestLabNodesLookLikeMachines checks that a privileged pod sees its node as a machine: hostPath
// resolves under the node's root, /sys/fs/cgroup is the node's cgroup subtree, /sys/fs/bpf a bpffs
// of the node's own, /proc the host's; and that CNI plugins see the node's files as its pods do.
func TestLabNodesLookLikeMachines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "machines")
	pod := func(name, node string) string {
		return `
apiVersion: v1
kind: Pod
metadata: {name: ` + name + `}
spec:
  nodeName: ` + node + `
  containers:
  - name: c
    image: ambient/echo
    securityContext: {privileged: true}
    volumeMounts:
    - {name: bpf, mountPath: /sys/fs/bpf}
    - {name: cgroup, mountPath: /sys/fs/cgroup}
    - {name: run, mountPath: /var/run/labtest}
    - {name: proc, mountPath: /host/proc, readOnly: true}
  volumes:
  - {name: bpf, hostPath: {path: /sys/fs/bpf}}
  - {name: cgroup, hostPath: {path: /sys/fs/cgroup}}
  - {name: run, hostPath: {path: /var/run/labtest, type: DirectoryOrCreate}}
  - {name: proc, hostPath: {path: /proc}}
---`
	}
	apply(t, ns, []byte(pod("machine-1", "node-1")+pod("machine-2", "node-2")+`
apiVersion: v1
kind: Pod
metadata: {name: no-socket}
spec:
  nodeName: node-1
  containers:
  - {name: c, image: ambient/echo, volumeMounts: [{name: s, mountPath: /cni.sock}]}
  volumes:
  - {name: s, hostPath: {path: /var/run/ambient/cni.sock, type: Socket}}
`))
	uids := map[string]string{}
	eventually(t, 60*time.Second, "machine pods running", func() bool {
		for _, name := range []string{"machine-1", "machine-2"} {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil || !podReady(p) {
				return false
			}
			uids[name] = string(p.UID)
		}
		return true
	})
	cgParent, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	for i, other := range []int{2, 1} {
		node, me, them := lab.NodeAt(i+1).Name, fmt.Sprintf("machine-%d", i+1), fmt.Sprintf("machine-%d", other)
		out := execIn(t, ns, me, "sh", "-c", `echo `+me+` > /var/run/labtest/marker && mkdir /sys/fs/bpf/pin-`+node+
			` && stat -f -c %t /sys/fs/bpf && ls /sys/fs/cgroup && test -f /host/proc/1/status && echo proc-ok`)
		if !strings.HasPrefix(out, "cafe4a11\n") {
			t.Errorf("%s: /sys/fs/bpf is not a bpffs: %q", me, out)
		}
		if !strings.Contains(out, uids[me]) || strings.Contains(out, uids[them]) {
			t.Errorf("%s: /sys/fs/cgroup lists %q; want its own pod %s and not %s's", me, out, uids[me], them)
		}
		if !strings.Contains(out, "proc-ok") {
			t.Errorf("%s: /host/proc is not the host's /proc: %q", me, out)
		}
		root := labCfg.NodeRoot(node)
		for _, f := range []string{"run/labtest/marker", "var/run/labtest/marker"} {
			if b, err := os.ReadFile(filepath.Join(root, f)); err != nil || string(b) != me+"\n" {
				t.Errorf("%s: host's %s = %q, %v; want the pod's marker", me, filepath.Join(root, f), b, err)
			}
		}
	}
	for i, other := range []int{2, 1} {
		root := labCfg.NodeRoot(lab.NodeAt(i + 1).Name)
		if _, err := os.Stat(filepath.Join(root, "sys/fs/bpf/pin-node-"+fmt.Sprint(i+1))); err != nil {
			t.Errorf("node-%d's bpffs lacks its pod's pin: %v", i+1, err)
		}
		if _, err := os.Stat(filepath.Join(root, "sys/fs/bpf/pin-node-"+fmt.Sprint(other))); err == nil {
			t.Errorf("node-%d's bpffs has node-%d's pin", i+1, other)
		}
	}

	// The node's CNI plugins run in the same view: they find what the node's pods wrote.
	out, err := exec.CommandContext(ctx, filepath.Join(labCfg.BinDir, "lab"), "nodeview", "--root", labCfg.NodeRoot("node-1"),
		"--cgroup", filepath.Join(cgParent, "node-1"), "--", "sh", "-c",
		"cat /var/run/labtest/marker; ls /etc/cni/net.d /opt/cni/bin/bridge /sys/fs/bpf/pin-node-1 /sys/fs/cgroup/"+uids["machine-1"]).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "machine-1\n") || !strings.Contains(string(out), "10-lab.conflist") {
		t.Errorf("lab nodeview on node-1: %v: %s", err, out)
	}

	// A hostPath that must exist and does not on this node keeps the pod from starting, saying why.
	eventually(t, 30*time.Second, "no-socket pod reports its missing hostPath", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "no-socket", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && strings.Contains(w.Message, "/var/run/ambient/cni.sock: type Socket requires it to exist")
	})
}
