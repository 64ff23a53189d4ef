//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// TestAgentOnboarding runs the node agent from deploy/ with a ZDS peer standing in for ztunnel,
// and walks through what a user does: label a namespace with running pods, start a new pod in
// it, opt a pod out, restart the agent, lose ztunnel, unlabel, and uninstall.
func TestAgentOnboarding(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cs := client(t)
	deployAgent(t, cs)
	applyPeer(t)
	t.Cleanup(func() {
		_ = cs.AppsV1().DaemonSets("istio-system").Delete(context.Background(), "zdspeer", metav1.DeleteOptions{})
	})
	clientBin := filepath.Join(labCfg.BinDir, "client")

	ns := newNamespace(t, cs, "onboard")
	outside := newNamespace(t, cs, "outside")
	apply(t, outside, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: outsider}\nspec:\n  containers: [{name: c, image: ambient/client}]\n"))
	pods := deployEcho(t, cs, ns)
	eventually(t, 60*time.Second, "outsider running", func() bool {
		p, err := cs.CoreV1().Pods(outside).Get(ctx, "outsider", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	before := containerStarts(t, cs, ns)
	echo := pods[0]

	// Label: every running pod enrolled, without a restart.
	start := time.Now()
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	eventually(t, 30*time.Second, "every pod annotated enabled", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	t.Logf("label to every pod enabled: %s", time.Since(start).Round(time.Millisecond))

	// The peer's own onward connection from the client's namespace is let through (its cgroup is
	// exempt) and lands on the echo pod's inbound capture.
	out := execIn(t, ns, "client", clientBin, "tcp", echo.Status.PodIP+":9090", "hi")
	if want := fmt.Sprintf("zdspeer outbound pod=%s/client dst=", ns); !strings.HasPrefix(out, want) ||
		!strings.Contains(out, "orig="+echo.Status.PodIP+":9090 | zdspeer inbound pod="+ns+"/"+echo.Name) {
		t.Errorf("outbound from the enrolled client = %q, want the peer's outbound listener, the original destination, "+
			"and the peer's onward connection captured inbound at %s", out, echo.Name)
	}
	for _, p := range pods {
		out := execIn(t, outside, "outsider", clientBin, "tcp", p.Status.PodIP+":9090", "hi")
		if want := fmt.Sprintf("zdspeer inbound pod=%s/%s dst=%s:9090", ns, p.Name, p.Status.PodIP); !strings.HasPrefix(out, want) {
			t.Errorf("inbound to %s = %q, want prefix %q", p.Name, out, want)
		}
		out = execIn(t, outside, "outsider", clientBin, "tcp", p.Status.PodIP+":15008", "hi")
		if want := fmt.Sprintf("zdspeer hbone pod=%s/%s", ns, p.Name); !strings.HasPrefix(out, want) {
			t.Errorf("HBONE port of %s = %q, want prefix %q", p.Name, out, want)
		}
	}

	// A new pod is captured from its first connection (the CNI plugin sets it up before it starts).
	for i := 1; i <= labCfg.Nodes; i++ {
		node := lab.NodeAt(i).Name
		b, err := os.ReadFile(filepath.Join(labCfg.NodeRoot(node), "etc/cni/net.d/10-lab.conflist"))
		if err != nil || !strings.Contains(string(b), `"ambient-cni"`) {
			t.Errorf("%s conflist does not chain ambient-cni: %v\n%s", node, err, b)
		}
	}
	apply(t, ns, []byte(fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: first}
spec:
  restartPolicy: Never
  containers: [{name: c, image: ambient/client, args: [tcp, "%s:9090", first]}]
---
apiVersion: v1
kind: Pod
metadata: {name: optout, labels: {istio.io/dataplane-mode: none}}
spec:
  containers: [{name: c, image: ambient/client}]
`, echo.Status.PodIP)))
	var first *corev1.Pod
	eventually(t, 60*time.Second, "pod first done", func() bool {
		var err error
		first, err = cs.CoreV1().Pods(ns).Get(ctx, "first", metav1.GetOptions{})
		return err == nil && (first.Status.Phase == corev1.PodSucceeded || first.Status.Phase == corev1.PodFailed)
	})
	if log := containerLog(t, first, "c"); !strings.HasPrefix(log, fmt.Sprintf("zdspeer outbound pod=%s/first", ns)) {
		t.Errorf("first connection of a new pod = %q, want it captured", log)
	}
	eventually(t, 60*time.Second, "optout running", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "optout", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	if got := execIn(t, ns, "optout", clientBin, "tcp", echo.Status.PodIP+":9090", "direct"); got != "zdspeer inbound pod="+ns+"/"+echo.Name+" dst="+echo.Status.PodIP+":9090\n" {
		t.Errorf("opted-out pod to an enrolled echo = %q, want its inbound captured at the destination only", got)
	}
	if p, _ := cs.CoreV1().Pods(ns).Get(ctx, "optout", metav1.GetOptions{}); p.Annotations[mesh.AnnotationRedirection] != "" {
		t.Errorf("opted-out pod annotated %q", p.Annotations[mesh.AnnotationRedirection])
	}

	// Kill the agent on the client's node: capture goes on, and its successor changes nothing.
	clientPod, _ := cs.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
	agentPod := podOn(t, cs, "istio-system", "app=ambient-agent", clientPod.Spec.NodeName)
	killPod(t, agentPod)
	if out := execIn(t, ns, "client", clientBin, "tcp", echo.Status.PodIP+":9090", "hi"); !strings.HasPrefix(out, "zdspeer outbound") {
		t.Errorf("with the agent killed, outbound = %q, want still captured", out)
	}
	eventually(t, 60*time.Second, "agent restarted and ready", func() bool {
		p, err := cs.CoreV1().Pods("istio-system").Get(ctx, agentPod.Name, metav1.GetOptions{})
		return err == nil && podReady(p) && p.Status.ContainerStatuses[0].RestartCount > agentPod.Status.ContainerStatuses[0].RestartCount
	})
	if !allAnnotated(t, cs, ns, mesh.RedirectionEnabled) {
		t.Error("after the agent restarted, not every pod is annotated enabled")
	}
	if out := execIn(t, ns, "client", clientBin, "tcp", echo.Status.PodIP+":9090", "hi"); !strings.HasPrefix(out, "zdspeer outbound") {
		t.Errorf("after the agent restarted, outbound = %q, want captured", out)
	}
	for _, e := range pods { // kubelet's probes reach the app past the capture
		if p, err := cs.CoreV1().Pods(ns).Get(ctx, e.Name, metav1.GetOptions{}); err != nil || !podReady(p) {
			t.Errorf("echo pod %s not ready while enrolled: %v", e.Name, err)
		}
	}

	// Agent frozen: a new pod outside the mesh still starts (the plugin asks the API server
	// itself); one in the mesh waits for the agent rather than start unprotected.
	agentPod = podOn(t, cs, "istio-system", "app=ambient-agent", clientPod.Spec.NodeName)
	signalPod(t, agentPod, syscall.SIGSTOP)
	apply(t, outside, []byte(fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec:\n  nodeName: %s\n  containers: [{name: c, image: ambient/client}]\n", clientPod.Spec.NodeName)))
	apply(t, ns, []byte(fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec:\n  nodeName: %s\n  containers: [{name: c, image: ambient/client}]\n", clientPod.Spec.NodeName)))
	eventually(t, 90*time.Second, "a pod outside the mesh starts while the agent is frozen", func() bool {
		p, err := cs.CoreV1().Pods(outside).Get(ctx, "late", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, "late", metav1.GetOptions{}); err != nil || p.Status.Phase == corev1.PodRunning {
		t.Errorf("a pod in the mesh started while the agent was frozen (%v)", err)
	}
	signalPod(t, agentPod, syscall.SIGCONT)
	eventually(t, 90*time.Second, "the pod in the mesh starts, enrolled, once the agent is back", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "late", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && p.Annotations[mesh.AnnotationRedirection] == mesh.RedirectionEnabled
	})
	if out := execIn(t, ns, "late", clientBin, "tcp", echo.Status.PodIP+":9090", "hi"); !strings.HasPrefix(out, "zdspeer outbound") {
		t.Errorf("outbound of the pod started after the agent came back = %q, want captured", out)
	}

	// Lose ztunnel: enrolled pods' connections fail, never bypass; back once it is.
	deleteAndWait(t, cs, "istio-system", "app=zdspeer", func() error {
		return cs.AppsV1().DaemonSets("istio-system").Delete(ctx, "zdspeer", metav1.DeleteOptions{})
	})
	if out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "2s", "tcp", echo.Status.PodIP+":9090", "hi"); err == nil {
		t.Errorf("with no ztunnel, outbound succeeded: %q; want refused", out)
	}
	if out, err := lab.Exec(ctx, labCfg, outside, "outsider", clientBin, "-timeout", "2s", "tcp", echo.Status.PodIP+":9090", "hi"); err == nil {
		t.Errorf("with no ztunnel, inbound to an enrolled pod succeeded: %q; want refused", out)
	}
	applyPeer(t)
	eventually(t, 60*time.Second, "capture works again once ztunnel is back", func() bool {
		out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "2s", "tcp", echo.Status.PodIP+":9090", "hi")
		return err == nil && strings.HasPrefix(out, "zdspeer outbound")
	})

	// Unlabel: direct again, annotations gone.
	labelNamespace(t, cs, ns, "")
	eventually(t, 30*time.Second, "annotations removed", func() bool { return allAnnotated(t, cs, ns, "") })
	if got := execIn(t, ns, "client", clientBin, "tcp", echo.Status.PodIP+":9090", "direct"); got != "direct" {
		t.Errorf("after unlabelling, tcp echo = %q, want direct", got)
	}
	if after := containerStarts(t, cs, ns); !sameStarts(before, after) {
		t.Errorf("containers restarted:\nbefore %v\nafter  %v", before, after)
	}

	// Uninstall with the namespace labelled: deleting the DaemonSet leaves nothing behind.
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	eventually(t, 30*time.Second, "every pod enabled again", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	uninstallAgent(t, cs)
	eventually(t, 30*time.Second, "annotations removed by the uninstall", func() bool { return allAnnotated(t, cs, ns, "") })
	if got := execIn(t, ns, "client", clientBin, "tcp", echo.Status.PodIP+":9090", "direct"); got != "direct" {
		t.Errorf("after uninstall, tcp echo = %q, want direct", got)
	}
}

// deployAgent installs the agent from deploy/ and waits until it runs on every node. Cleanup
// uninstalls.
func deployAgent(t testing.TB, cs kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	eventually(t, 2*time.Minute, "an earlier istio-system to be deleted", func() bool {
		n, err := cs.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		return err != nil || n.DeletionTimestamp == nil
	})
	apply(t, "default", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n"))
	b, err := os.ReadFile("../deploy/agent/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, "istio-system", b)
	t.Cleanup(func() { uninstallAgent(t, cs) })
	eventually(t, 90*time.Second, "agent ready on every node", func() bool {
		return readyOnNodes(cs, "istio-system", "app=ambient-agent") == labCfg.Nodes
	})
}

func applyPeer(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile("testdata/zdspeer.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, "istio-system", b)
	eventually(t, 60*time.Second, "ZDS peer running on every node", func() bool {
		return readyOnNodes(client(t), "istio-system", "app=zdspeer") == labCfg.Nodes
	})
}

// uninstallAgent deletes the DaemonSet and waits until no node has a pin or a CNI entry left.
func uninstallAgent(t testing.TB, cs kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	deleteAndWait(t, cs, "istio-system", "app=ambient-agent", func() error {
		err := cs.AppsV1().DaemonSets("istio-system").Delete(ctx, "ambient-agent", metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	for i := 1; i <= labCfg.Nodes; i++ {
		root := labCfg.NodeRoot(lab.NodeAt(i).Name)
		if _, err := os.Stat(filepath.Join(root, "sys/fs/bpf/ambient")); !os.IsNotExist(err) {
			t.Errorf("node-%d: pin directory left after uninstall (%v)", i, err)
		}
		if _, err := os.Stat(filepath.Join(root, "opt/cni/bin/ambient-cni")); !os.IsNotExist(err) {
			t.Errorf("node-%d: CNI binary left after uninstall (%v)", i, err)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "etc/cni/net.d/10-lab.conflist")); strings.Contains(string(b), "ambient-cni") {
			t.Errorf("node-%d: CNI entry left after uninstall:\n%s", i, b)
		}
	}
}

// deleteAndWait deletes with del and waits until no pod matches the selector.
func deleteAndWait(t testing.TB, cs kubernetes.Interface, ns, selector string, del func() error) {
	t.Helper()
	if err := del(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "pods "+selector+" gone", func() bool {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		return err == nil && len(pods.Items) == 0
	})
}

func readyOnNodes(cs kubernetes.Interface, ns, selector string) int {
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return 0
	}
	nodes := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && (podReady(p) || p.Spec.Containers[0].ReadinessProbe == nil) {
			nodes[p.Spec.NodeName] = true
		}
	}
	return len(nodes)
}

func podOn(t testing.TB, cs kubernetes.Interface, ns, selector, node string) *corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if pods.Items[i].Spec.NodeName == node {
			return &pods.Items[i]
		}
	}
	t.Fatalf("no pod %s on %s", selector, node)
	return nil
}

// killPod SIGKILLs every process of the pod (its kubelet restarts the containers).
func killPod(t *testing.T, p *corev1.Pod) { signalPod(t, p, syscall.SIGKILL) }

// signalPod sends sig to every process of the pod.
func signalPod(t *testing.T, p *corev1.Pod, sig syscall.Signal) {
	t.Helper()
	cg, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(cg, p.Spec.NodeName, string(p.UID), "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		var pid int
		fmt.Sscan(f, &pid)
		_ = syscall.Kill(pid, sig)
	}
}

func labelNamespace(t testing.TB, cs kubernetes.Interface, ns, value string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, mesh.LabelDataplaneMode)
	if value != "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, mesh.LabelDataplaneMode, value)
	}
	if _, err := cs.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// allAnnotated reports whether every running pod of the namespace (but those labelled out) has
// the redirection annotation at value ("" for none).
func allAnnotated(t testing.TB, cs kubernetes.Interface, ns, value string) bool {
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return false
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeNone {
			continue
		}
		if p.Annotations[mesh.AnnotationRedirection] != value {
			return false
		}
	}
	return true
}

// deployEcho applies testdata/echo.yaml (two echo pods, one per node, and a client) and returns
// the echo pods once they are ready and the client runs.
func deployEcho(t testing.TB, cs kubernetes.Interface, ns string) []corev1.Pod {
	t.Helper()
	manifest, err := os.ReadFile("testdata/echo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ns, manifest)
	var echo []corev1.Pod
	eventually(t, 60*time.Second, "echo pods ready on both nodes and client running", func() bool {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		echo = echo[:0]
		clientOK := false
		for _, p := range pods.Items {
			if p.Name == "client" {
				clientOK = p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
			} else if p.Labels["app"] == "echo" && podReady(&p) {
				echo = append(echo, p)
			}
		}
		return clientOK && len(echo) == 2
	})
	return echo
}

// echoByNode returns the client pod of deployEcho's namespace, the echo pod on the other node
// and the one on the client's node.
func echoByNode(t testing.TB, cs kubernetes.Interface, ns string, echo []corev1.Pod) (clientPod *corev1.Pod, remote, local corev1.Pod) {
	t.Helper()
	clientPod, err := cs.CoreV1().Pods(ns).Get(context.Background(), "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	remote, local = echo[0], echo[1]
	if remote.Spec.NodeName == clientPod.Spec.NodeName {
		remote, local = local, remote
	}
	return clientPod, remote, local
}

// containerStarts records each container's start time and restart count.
func containerStarts(t *testing.T, cs kubernetes.Interface, ns string) map[string]string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			started := ""
			if c.State.Running != nil {
				started = c.State.Running.StartedAt.String()
			}
			out[p.Name+"/"+c.Name] = fmt.Sprintf("started %s restarts %d", started, c.RestartCount)
		}
	}
	return out
}

// sameStarts compares the containers present in both records.
func sameStarts(before, after map[string]string) bool {
	for k, v := range before {
		if a, ok := after[k]; ok && a != v {
			return false
		}
	}
	return true
}

// containerLog reads a container's log through the API server and the lab kubelet's API, as
// kubectl logs does.
func containerLog(t testing.TB, p *corev1.Pod, container string) string {
	return podLog(t, p, &corev1.PodLogOptions{Container: container})
}

func podLog(t testing.TB, p *corev1.Pod, o *corev1.PodLogOptions) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := client(t).CoreV1().Pods(p.Namespace).GetLogs(p.Name, o).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of %s/%s %s: %v: %s", p.Namespace, p.Name, o.Container, err, b)
	}
	return string(b)
}
