//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-mesh/ambient/api/status"
	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/internal/ambientctl"
)

// ambientctlRun runs bin/ambientctl against the lab and returns its stdout, stderr and exit code.
func ambientctlRun(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(labCfg.BinDir, "ambientctl"), append([]string{"--kubeconfig", labCfg.Kubeconfig()}, args...)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("ambientctl %v: %v", args, err)
	}
	return out.String(), errOut.String(), 0
}

// statusReport runs ambientctl status -o json.
func statusReport(t testing.TB) (ambientctl.Report, int) {
	t.Helper()
	out, errOut, code := ambientctlRun(t, "status", "-o", "json")
	var r ambientctl.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("ambientctl status -o json (exit %d): %v\n%s\n%s", code, err, out, errOut)
	}
	return r, code
}

func hasProblem(r ambientctl.Report, object, cause string) bool {
	return slices.ContainsFunc(r.Problems, func(p ambientctl.Problem) bool {
		return strings.Contains(p.Object, object) && strings.Contains(p.Cause, cause) && p.Hint != ""
	})
}

// TestAmbientctl drives the operator's CLI against the mesh installed from deploy/: enroll
// (the pods join, no restart), status on a healthy mesh (exit 0), workloads, services, certs and the
// node preflight (check, in a node's view), then status on broken ones, each
// reported with its cause and a non-zero exit: a policy with a problem, ztunnel or the node
// agent missing on a node, istiod-lite down; and unenroll.
func TestAmbientctl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cs := client(t)
	installMesh(t, cs)
	ns := newNamespace(t, cs, "ctl")
	echo := deployEcho(t, cs, ns)

	out, errOut, code := ambientctlRun(t, "enroll", ns, "-o", "json")
	var e ambientctl.Enrollment
	if err := json.Unmarshal([]byte(out), &e); err != nil || code != 0 {
		t.Fatalf("enroll: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	if len(e.Done) != 3 || len(e.Failed) != 0 || !strings.Contains(errOut, "3/3 pods of "+ns+" redirected") {
		t.Errorf("enroll: %+v; progress:\n%s", e, errOut)
	}

	r, code := statusReport(t)
	if code != 0 || len(r.Problems) != 0 {
		t.Fatalf("status of a healthy mesh: exit %d, problems %+v", code, r.Problems)
	}
	if !r.ControlPlane.Installed || r.ControlPlane.Ready != 1 || r.ControlPlane.Leader == "" || r.ControlPlane.Proxies != labCfg.Nodes ||
		r.ControlPlane.UpToDate != labCfg.Nodes || r.ControlPlane.RootNotAfter.Before(time.Now().Add(300*24*time.Hour)) || r.ControlPlane.Version == "" {
		t.Errorf("control plane: %+v", r.ControlPlane)
	}
	served := 0
	for _, n := range r.Nodes {
		if n.Ztunnel != "ready" || n.Agent != "ready" || !n.ConfigConnected || n.Certificates == 0 || n.EarliestExpiry.IsZero() {
			t.Errorf("node %+v", n)
		}
		served += n.Workloads
	}
	if served != 3 || !slices.Contains(r.Namespaces, ns) || len(r.Workloads) != 3 {
		t.Errorf("workloads served %d, namespaces %v, workloads %+v", served, r.Namespaces, r.Workloads)
	}
	// What the ztunnels hold.
	var wls []status.Workload
	out, _, code = ambientctlRun(t, "workloads", "-n", ns, "-o", "json")
	if err := json.Unmarshal([]byte(out), &wls); err != nil || code != 0 || len(wls) != 3 ||
		slices.ContainsFunc(wls, func(w status.Workload) bool {
			return w.Protocol != "HBONE" || !strings.HasSuffix(w.Identity, "/ns/"+ns+"/sa/default")
		}) {
		t.Errorf("workloads: exit %d, %v: %s", code, err, out)
	}
	var svcs []status.Service
	out, _, code = ambientctlRun(t, "services", "-n", ns, "-o", "json")
	if err := json.Unmarshal([]byte(out), &svcs); err != nil || code != 0 || len(svcs) != 1 || svcs[0].Endpoints != 2 || len(svcs[0].VIPs) == 0 {
		t.Errorf("services: exit %d, %v: %s", code, err, out)
	}
	var certs []ambientctl.NodeCertificate
	out, _, code = ambientctlRun(t, "certs", "-o", "json")
	if err := json.Unmarshal([]byte(out), &certs); err != nil || code != 0 ||
		!slices.ContainsFunc(certs, func(c ambientctl.NodeCertificate) bool {
			return c.Identity == "spiffe://cluster.local/ns/"+ns+"/sa/default" && c.State == "valid" && c.NotAfter.After(time.Now())
		}) {
		t.Errorf("certs: exit %d, %v: %s", code, err, out)
	}
	// The node preflight, run as on a node: in the node's view of the file system.
	cg, err := lab.LabCgroup()
	if err != nil {
		t.Fatal(err)
	}
	pre, err := exec.Command(filepath.Join(labCfg.BinDir, "lab"), "nodeview", "--root", labCfg.NodeRoot("node-1"), "--cgroup", filepath.Join(cg, "node-1"),
		"--", filepath.Join(labCfg.BinDir, "ambientctl"), "check").CombinedOutput()
	if err != nil {
		t.Errorf("ambientctl check on node-1: %v\n%s", err, pre)
	}
	if out, _, code := ambientctlRun(t, "status"); code != 0 || !strings.Contains(out, "no problems found") {
		t.Errorf("status table: exit %d\n%s", code, out)
	}
	if out, _, code := ambientctlRun(t, "version"); code != 0 || !strings.Contains(out, "control plane: "+r.ControlPlane.Version) {
		t.Errorf("version: exit %d\n%s", code, out)
	}

	t.Run("a policy with a problem", func(t *testing.T) {
		apply(t, ns, []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
`))
		eventually(t, 60*time.Second, "status reports the policy", func() bool {
			r, code := statusReport(t)
			return code == 1 && hasProblem(r, ns+"/authorizationpolicy/get-only", "")
		})
		kubectl(t, "-n", ns, "delete", "authorizationpolicy", "get-only")
		eventually(t, 60*time.Second, "status healthy again", func() bool { _, code := statusReport(t); return code == 0 })
	})

	// A DaemonSet kept off one node: ztunnel (its pods' connections refused) or the agent.
	node := echo[len(echo)-1].Spec.NodeName
	for _, ds := range []struct{ name, cause string }{{"ztunnel", "no ztunnel"}, {"ambient-agent", "no node agent"}} {
		t.Run(ds.name+" missing on a node", func(t *testing.T) {
			patch := `{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/hostname","operator":"NotIn","values":["` + node + `"]}]}]}}}}}}}`
			if _, err := cs.AppsV1().DaemonSets("istio-system").Patch(ctx, ds.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 90*time.Second, "status reports "+node+" without "+ds.name, func() bool {
				r, code := statusReport(t)
				return code == 1 && hasProblem(r, "node/"+node, ds.cause)
			})
			restore := `{"spec":{"template":{"spec":{"affinity":null}}}}`
			if _, err := cs.AppsV1().DaemonSets("istio-system").Patch(ctx, ds.name, types.StrategicMergePatchType, []byte(restore), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 90*time.Second, "status healthy again", func() bool { _, code := statusReport(t); return code == 0 })
		})
	}

	t.Run("istiod-lite down", func(t *testing.T) {
		scale := func(n int32) {
			s, err := cs.AppsV1().Deployments("istio-system").GetScale(ctx, "istiod-lite", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s.Spec.Replicas = n
			if _, err := cs.AppsV1().Deployments("istio-system").UpdateScale(ctx, "istiod-lite", s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		scale(0)
		eventually(t, 60*time.Second, "status reports istiod-lite down and ztunnels cut off", func() bool {
			r, code := statusReport(t)
			return code == 1 && hasProblem(r, "deployment/istiod-lite", "no ready replica")
		})
		scale(1)
		eventually(t, 90*time.Second, "status healthy again", func() bool { _, code := statusReport(t); return code == 0 })
	})

	out, errOut, code = ambientctlRun(t, "unenroll", ns, "-o", "json")
	if err := json.Unmarshal([]byte(out), &e); err != nil || code != 0 || len(e.Done) != 3 {
		t.Fatalf("unenroll: exit %d, %v, %+v\n%s", code, err, e, errOut)
	}
	// The pods were never restarted.
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if restarts(&p) != 0 {
			t.Errorf("pod %s restarted %d times", p.Name, restarts(&p))
		}
	}
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}
