// Package demo is `make demo`: on the lab, it installs the mesh from deploy/ as a user would,
// deploys a sample application in namespace demo (a client, an echo service with two versions)
// and walks through the promise step by step, printing what each step shows: traffic in
// plaintext, enrollment with no restart, the same traffic in mTLS with both identities in
// ztunnel's access log and the metrics rising, an AuthorizationPolicy denying then allowing, and
// `ambientctl status`. Run returns the outcome of every step, which the end-to-end test asserts;
// the printed words are for people and may change. A run resets what a previous run left (the
// namespace is taken out of the mesh first), so it can be repeated.
package demo

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/lab"
)

//go:embed app.yaml
var appManifest []byte

// Namespace is where the sample application runs.
const Namespace = "demo"

// Outcome is what each step showed.
type Outcome struct {
	// PlaintextReadable: before enrolling, the message crossed the lab network readable.
	PlaintextReadable bool
	// Before and After are the pods' start times and restart counts around the enrollment.
	Before, After map[string]PodLife
	Enrolled      []string // pods ambientctl enroll reported as joined
	// MessageHidden and HBONEPackets: after enrolling, the message never crossed readable, and
	// the traffic went to port 15008.
	MessageHidden bool
	HBONEPackets  int
	// AccessLog is a destination access-log line with both identities over mutual TLS.
	AccessLog string
	// OpenedBefore and OpenedAfter are istio_tcp_connections_opened_total summed over the
	// ztunnels around three connections.
	OpenedBefore, OpenedAfter float64
	// Denied: the client could not connect while the DENY policy was in force; Allowed: it
	// could again once the policy was removed.
	Denied, Allowed bool
	// StatusExit is ambientctl status's exit code at the end.
	StatusExit int
}

// PodLife is when a pod started and how often its containers restarted.
type PodLife struct {
	Started  time.Time
	Restarts int32
}

type demo struct {
	cfg  lab.Config
	cs   kubernetes.Interface
	out  io.Writer
	tmp  string
	step int
}

// Run walks through the demo on the lab cfg, which must be up.
func Run(ctx context.Context, cfg lab.Config, out io.Writer) (*Outcome, error) {
	cs, err := lab.Client(cfg)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "ambient-demo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	d := &demo{cfg: cfg, cs: cs, out: out, tmp: tmp}
	o := &Outcome{}
	for _, s := range []func(context.Context, *Outcome) error{d.install, d.deployApp, d.plaintext, d.enroll, d.mtls, d.policy, d.status} {
		if err := s(ctx, o); err != nil {
			return o, err
		}
	}
	d.outro()
	return o, nil
}

func (d *demo) title(title, shows string) {
	d.step++
	fmt.Fprintf(d.out, "\n\033[1m── %d. %s\033[0m\n%s\n\n", d.step, title, shows)
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, "   "+format+"\n", args...) }

// command runs a program of the lab (kubectl, ambientctl) and returns its output and exit code.
func (d *demo) command(ctx context.Context, stdin []byte, prog string, args ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode(), nil
	}
	return string(out), 0, err
}

func (d *demo) kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	out, code, err := d.command(ctx, stdin, filepath.Join(d.cfg.StateDir(), "bin", "kubectl"), append([]string{"--kubeconfig", d.cfg.Kubeconfig()}, args...)...)
	if err == nil && code != 0 {
		err = fmt.Errorf("kubectl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out))
	}
	return out, err
}

func (d *demo) ambientctl(ctx context.Context, args ...string) (string, int, error) {
	return d.command(ctx, nil, filepath.Join(d.cfg.BinDir, "ambientctl"), append([]string{"--kubeconfig", d.cfg.Kubeconfig()}, args...)...)
}

// wait polls cond every half second until it holds, printing what it waits for when that
// changes, or fails after timeout.
func (d *demo) wait(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, progress := cond()
		if ok {
			return nil
		}
		if progress != last && progress != "" {
			d.say("… %s: %s", what, progress)
			last = progress
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s (%s)", timeout, what, progress)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (d *demo) install(ctx context.Context, _ *Outcome) error {
	d.title("Install the mesh", "kubectl apply --server-side -k deploy/: CRDs, istiod-lite, the node agent and ztunnel on every node.")
	// An istio-system still terminating (a recent uninstall) refuses new objects: wait it out.
	if err := d.wait(ctx, 2*time.Minute, "the previous istio-system to finish terminating", func() (bool, string) {
		ns, err := d.cs.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		return err != nil || ns.DeletionTimestamp == nil, "terminating"
	}); err != nil {
		return err
	}
	if _, err := d.kubectl(ctx, nil, "apply", "--server-side", "--force-conflicts", "-k", filepath.Join(d.cfg.Root, "deploy")); err != nil {
		return err
	}
	return d.wait(ctx, 3*time.Minute, "the mesh ready", func() (bool, string) {
		var parts []string
		ok := true
		dep, err := d.cs.AppsV1().Deployments("istio-system").Get(ctx, "istiod-lite", metav1.GetOptions{})
		if err != nil || dep.Status.ReadyReplicas < 1 {
			ok = false
		}
		if err == nil {
			parts = append(parts, fmt.Sprintf("istiod-lite %d/1", dep.Status.ReadyReplicas))
		}
		for _, name := range []string{"ambient-agent", "ztunnel"} {
			ds, err := d.cs.AppsV1().DaemonSets("istio-system").Get(ctx, name, metav1.GetOptions{})
			if err != nil || ds.Status.NumberReady < int32(d.cfg.Nodes) || ds.Status.UpdatedNumberScheduled < int32(d.cfg.Nodes) {
				ok = false
			}
			if err == nil {
				parts = append(parts, fmt.Sprintf("%s %d/%d", name, ds.Status.NumberReady, d.cfg.Nodes))
			}
		}
		return ok, strings.Join(parts, ", ")
	})
}

func (d *demo) deployApp(ctx context.Context, _ *Outcome) error {
	d.title("Deploy the sample application", "Namespace demo: a client, and echo-v1 and echo-v2 behind the Service echo, on different nodes. Not in the mesh yet.")
	if _, err := d.cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{}); err != nil {
		if _, err := d.kubectl(ctx, nil, "create", "namespace", Namespace); err != nil {
			return err
		}
	} else if out, code, err := d.ambientctl(ctx, "unenroll", Namespace); err != nil || code != 0 {
		return fmt.Errorf("take demo out of the mesh (left by a previous run): %v %s", err, out)
	}
	if _, err := d.kubectl(ctx, appManifest, "-n", Namespace, "apply", "-f", "-"); err != nil {
		return err
	}
	return d.wait(ctx, 2*time.Minute, "the application ready", func() (bool, string) {
		pods, err := d.pods(ctx)
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, p := range pods {
			if podReady(&p) {
				ready++
			}
		}
		return ready == 3 && len(pods) == 3, fmt.Sprintf("%d/3 pods ready", ready)
	})
}

// pods are the application's pods that are not being deleted.
func (d *demo) pods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := d.cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// remoteEcho is the echo pod on another node than the client: traffic to it crosses the lab
// network, where the capture sees it.
func (d *demo) remoteEcho(ctx context.Context) (client, echo corev1.Pod, err error) {
	pods, err := d.pods(ctx)
	if err != nil {
		return client, echo, err
	}
	for _, p := range pods {
		if p.Labels["app"] == "client" {
			client = p
		}
	}
	for _, p := range pods {
		if p.Labels["app"] == "echo" && p.Spec.NodeName != client.Spec.NodeName {
			echo = p
		}
	}
	if client.Name == "" || echo.Name == "" {
		return client, echo, errors.New("no client, or no echo pod on another node than the client")
	}
	return client, echo, nil
}

// send has the client send msg to addr over TCP and returns what came back.
func (d *demo) send(ctx context.Context, addr, msg string) (string, error) {
	return d.kubectl(ctx, nil, "-n", Namespace, "exec", "deploy/client", "--", "client", "-timeout=3s", "tcp", addr, msg)
}

func (d *demo) plaintext(ctx context.Context, o *Outcome) error {
	d.title("Traffic without the mesh", "The client sends a message to echo on the other node; a capture on the lab network between the nodes reads it.")
	_, echo, err := d.remoteEcho(ctx)
	if err != nil {
		return err
	}
	const msg = "hello-in-the-clear"
	c, err := lab.CaptureSwitch(ctx, d.tmp, "tcp port 9090", func() error {
		got, err := d.send(ctx, echo.Status.PodIP+":9090", msg)
		if err == nil {
			d.say("client → %s (%s, %s): sent %q, echoed %q", echo.Name, echo.Status.PodIP, echo.Spec.NodeName, msg, strings.TrimSpace(got))
		}
		return err
	})
	if err != nil {
		return err
	}
	o.PlaintextReadable = bytes.Contains(c.Raw, []byte(msg))
	// The first packet that carries data, and the line of it where tcpdump shows the message.
	snippet, _ := c.Packets(ctx, "tcp dst port 9090 and tcp[tcpflags] & tcp-push != 0", true, 1)
	d.say("tcpdump on the lab network:")
	for i, l := range strings.Split(strings.TrimSpace(snippet), "\n") {
		if i == 0 || strings.Contains(l, msg) {
			d.say("  │ %s", l)
		}
	}
	d.say("readable on the wire: %v", o.PlaintextReadable)
	return nil
}

func (d *demo) podLives(ctx context.Context) (map[string]PodLife, error) {
	pods, err := d.pods(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]PodLife{}
	for _, p := range pods {
		var l PodLife
		if p.Status.StartTime != nil {
			l.Started = p.Status.StartTime.Time
		}
		for _, s := range p.Status.ContainerStatuses {
			l.Restarts += s.RestartCount
		}
		out[p.Name] = l
	}
	return out, nil
}

func (d *demo) printLives(when string, lives map[string]PodLife) {
	d.say("%s:", when)
	for name, l := range lives {
		d.say("  %-28s started %s, %d restarts", name, l.Started.Format(time.TimeOnly), l.Restarts)
	}
}

func (d *demo) enroll(ctx context.Context, o *Outcome) error {
	d.title("Join the mesh: ambientctl enroll demo", "Labels the namespace istio.io/dataplane-mode=ambient; the node agents redirect the running pods. Nothing restarts.")
	var err error
	if o.Before, err = d.podLives(ctx); err != nil {
		return err
	}
	d.printLives("before", o.Before)
	out, code, err := d.ambientctl(ctx, "enroll", Namespace)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(l, "pods of "+Namespace) { // the progress lines
			d.say("%s", l)
		}
	}
	if code != 0 {
		return fmt.Errorf("ambientctl enroll demo: exit %d", code)
	}
	pods, err := d.pods(ctx)
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.Annotations[mesh.AnnotationRedirection] == mesh.RedirectionEnabled {
			o.Enrolled = append(o.Enrolled, p.Name)
		}
	}
	if o.After, err = d.podLives(ctx); err != nil {
		return err
	}
	d.printLives("after", o.After)
	return nil
}

func (d *demo) mtls(ctx context.Context, o *Outcome) error {
	d.title("The same traffic, in the mesh", "Now ztunnel carries it in mutual TLS (HBONE, port 15008); its access log names both identities; its metrics count it.")
	_, echo, err := d.remoteEcho(ctx)
	if err != nil {
		return err
	}
	o.OpenedBefore, err = d.connectionsOpened(ctx)
	if err != nil {
		return err
	}
	const msg = "hello-through-the-mesh"
	c, err := lab.CaptureSwitch(ctx, d.tmp, "tcp port 15008", func() error {
		for i := range 3 {
			got, err := d.send(ctx, echo.Status.PodIP+":9090", msg)
			if err != nil {
				return err
			}
			if i == 0 {
				d.say("client → %s: sent %q, echoed %q", echo.Name, msg, strings.TrimSpace(got))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.MessageHidden = !bytes.Contains(c.Raw, []byte(msg))
	o.HBONEPackets = c.Count(ctx, "tcp port 15008")
	snippet, _ := c.Packets(ctx, "tcp dst port 15008 and tcp[tcpflags] & tcp-push != 0", false, 3)
	d.say("tcpdump on the lab network (%d packets to or from 15008; the message readable: %v):", o.HBONEPackets, !o.MessageHidden)
	for _, l := range strings.Split(strings.TrimSpace(snippet), "\n") {
		d.say("  │ %s", l)
	}
	if err := d.wait(ctx, 20*time.Second, "the access log line", func() (bool, string) {
		o.AccessLog = d.accessLog(ctx)
		return o.AccessLog != "", ""
	}); err != nil {
		return err
	}
	d.say("ztunnel's access log (kubectl -n istio-system logs ds/ztunnel):")
	d.say("  │ %s", o.AccessLog)
	if err := d.wait(ctx, 20*time.Second, "the metrics", func() (bool, string) {
		o.OpenedAfter, err = d.connectionsOpened(ctx)
		return err == nil && o.OpenedAfter >= o.OpenedBefore+3, ""
	}); err != nil {
		return err
	}
	d.say("istio_tcp_connections_opened_total over the ztunnels: %v → %v", o.OpenedBefore, o.OpenedAfter)
	return nil
}

// accessLog finds a destination access-log line with the client's and echo's identities over
// mutual TLS.
func (d *demo) accessLog(ctx context.Context) string {
	zts, err := d.cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		return ""
	}
	for _, z := range zts.Items {
		b, err := d.cs.CoreV1().Pods("istio-system").GetLogs(z.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"reporter":"destination"`) && strings.Contains(l, `"src_principal":"cluster.local/ns/demo/sa/client"`) &&
				strings.Contains(l, `"dst_principal":"cluster.local/ns/demo/sa/echo"`) && strings.Contains(l, `"security":"mutual_tls"`) {
				return l
			}
		}
	}
	return ""
}

// connectionsOpened sums istio_tcp_connections_opened_total over every ztunnel, read through
// the API server's pod proxy.
func (d *demo) connectionsOpened(ctx context.Context) (float64, error) {
	zts, err := d.cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, z := range zts.Items {
		b, err := d.cs.CoreV1().Pods("istio-system").ProxyGet("http", z.Name, strconv.Itoa(mesh.PortMetrics), "/metrics", nil).DoRaw(ctx)
		if err != nil {
			return 0, fmt.Errorf("metrics of %s: %w", z.Name, err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "istio_tcp_connections_opened_total{") {
				f := strings.Fields(l)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err == nil {
					sum += v
				}
			}
		}
	}
	return sum, nil
}

const denyPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
`

func (d *demo) policy(ctx context.Context, o *Outcome) error {
	d.title("Policy", "An AuthorizationPolicy denies the client's service account at echo; removing it allows the client again. No restart, no sidecar.")
	for _, l := range strings.Split(strings.TrimSpace(denyPolicy), "\n") {
		d.say("  │ %s", l)
	}
	if _, err := d.kubectl(ctx, []byte(denyPolicy), "-n", Namespace, "apply", "-f", "-"); err != nil {
		return err
	}
	var lastErr error
	err := d.wait(ctx, 30*time.Second, "the policy in force", func() (bool, string) {
		_, lastErr = d.send(ctx, "echo:9090", "denied?")
		return lastErr != nil, ""
	})
	if err != nil {
		return err
	}
	o.Denied = true
	// What the client itself said (the error carries kubectl's command line first).
	said := firstLine(lastErr.Error())
	if i := strings.Index(said, "client: "); i >= 0 {
		said = said[i:]
	}
	d.say("client → echo: refused (%s)", said)
	if _, err := d.kubectl(ctx, nil, "-n", Namespace, "delete", "authorizationpolicies.security.istio.io", "deny-client"); err != nil {
		return err
	}
	var got string
	err = d.wait(ctx, 30*time.Second, "the client allowed again", func() (bool, string) {
		got, lastErr = d.send(ctx, "echo:9090", "allowed-again")
		return lastErr == nil, ""
	})
	if err != nil {
		return err
	}
	o.Allowed = true
	d.say("policy deleted; client → echo: echoed %q", strings.TrimSpace(got))
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func (d *demo) status(ctx context.Context, o *Outcome) error {
	d.title("ambientctl status", "The control plane, each node's ztunnel and agent, enrolled namespaces and workloads, and any problem with its cause and a hint.")
	out, code, err := d.ambientctl(ctx, "status")
	if err != nil {
		return err
	}
	o.StatusExit = code
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("%s", l)
	}
	return nil
}

func (d *demo) outro() {
	fmt.Fprintf(d.out, "\n\033[1m── Explore\033[0m\n"+
		"   export KUBECONFIG=%s\n"+
		"   %s/kubectl -n istio-system logs ds/ztunnel -f     # the access log\n"+
		"   %s/ambientctl status\n"+
		"   %s/kubectl -n demo exec deploy/client -- client tcp echo:9090 hi\n"+
		"   make lab-down                                      # stop and remove the lab\n",
		d.cfg.Kubeconfig(), filepath.Join(d.cfg.StateDir(), "bin"), d.cfg.BinDir, filepath.Join(d.cfg.StateDir(), "bin"))
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
