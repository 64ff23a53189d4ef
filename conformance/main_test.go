//go:build conformance

// Package conformance runs the Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance), unmodified, against the mesh on the lab: its mesh
// profiles, MESH-HTTP and MESH-GRPC. TestMain brings the lab up as the end-to-end tests do and
// installs the mesh from deploy/ as a user would (kubectl apply --server-side -k deploy/);
// TestConformance runs the suite and writes its report. See README.md.
package conformance

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/e2e/lab"
)

// labCfg is the lab the suite runs on.
var labCfg lab.Config

// keepLabEnv set to 1 reuses a lab that is up (with what runs in it) and leaves the lab up at
// the end, for looking at what the suite left (with -args --cleanup-base-resources=false) or
// running it again. A reused lab runs the kubelets and mesh binaries it was started with: after
// rebuilding bin/, take it down first (make lab-down).
const keepLabEnv = "AMBIENT_CONFORMANCE_KEEP_LAB"

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// Flags first: -h and -test.list must not touch the lab.
	flag.Parse()
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "conformance: the lab needs root, and CI=true forbids skipping")
			return 1
		}
		fmt.Fprintln(os.Stderr, "conformance: skipped: the lab needs root (network namespaces, cgroups)")
		return 0
	}
	wd, _ := os.Getwd()
	root, err := lab.FindRoot(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		return 1
	}
	labCfg = lab.Default(root)
	if labCfg.ToolsDir, err = lab.BuildTools(root); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		return 1
	}
	// The suite's echo-advanced image plays bin/echo-advanced; the mesh runs from bin/ too.
	for _, p := range []string{"lab", "echo-advanced", "istiod-lite", "ztunnel", "waypoint"} {
		if _, err := os.Stat(filepath.Join(labCfg.BinDir, p)); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: bin/%s missing; run make build first\n", p)
			return 1
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "conformance")
	unlock, err := lab.Lock(log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		return 1
	}
	defer unlock()
	keep := os.Getenv(keepLabEnv) == "1"
	if !keep {
		// As the end-to-end tests: a fresh lab, so that it runs the binaries just built.
		if err := lab.Down(labCfg, log); err != nil {
			fmt.Fprintln(os.Stderr, "conformance: clean earlier lab:", err)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	start := time.Now()
	err = lab.Up(ctx, labCfg, log) // a lab that is up is left as it is
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance: lab up:", err)
		if !keep {
			_ = lab.Down(labCfg, log)
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "conformance: lab up in %s\n", time.Since(start).Round(time.Millisecond))
	code := 1
	if err := installMesh(log); err != nil {
		fmt.Fprintln(os.Stderr, "conformance: install the mesh:", err)
	} else {
		// The suite's clients (controller-runtime's config.GetConfig) find the lab here.
		os.Setenv("KUBECONFIG", labCfg.Kubeconfig())
		code = m.Run()
	}
	if keep {
		fmt.Fprintf(os.Stderr, "conformance: the lab stays up (%s=1): KUBECONFIG=%s; make lab-down ends it\n", keepLabEnv, labCfg.Kubeconfig())
		return code
	}
	if err := lab.Down(labCfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "conformance: lab down:", err)
		return 1
	}
	return code
}

// installMesh installs the mesh as a user does and as make demo does (e2e/demo): kubectl apply
// --server-side -k deploy/, then waits for istiod-lite, and for the node agent and ztunnel on
// every node.
func installMesh(log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs, err := lab.Client(labCfg)
	if err != nil {
		return err
	}
	// An istio-system still terminating (a recent uninstall on a kept lab) refuses new objects.
	if err := waitFor(ctx, 2*time.Minute, "the previous istio-system to finish terminating", func() (bool, string) {
		ns, err := cs.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		return err != nil || ns.DeletionTimestamp == nil, "terminating"
	}); err != nil {
		return err
	}
	kubectl := filepath.Join(labCfg.StateDir(), "bin", "kubectl")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", labCfg.Kubeconfig(),
		"apply", "--server-side", "--force-conflicts", "-k", filepath.Join(labCfg.Root, "deploy")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply --server-side -k deploy/: %w: %s", err, strings.TrimSpace(string(out)))
	}
	log.Info("mesh applied from deploy/; waiting for it to be ready")
	return waitFor(ctx, 3*time.Minute, "the mesh ready", func() (bool, string) { return meshReady(ctx, cs) })
}

func meshReady(ctx context.Context, cs kubernetes.Interface) (bool, string) {
	var parts []string
	ok := true
	dep, err := cs.AppsV1().Deployments("istio-system").Get(ctx, "istiod-lite", metav1.GetOptions{})
	if err != nil || dep.Status.ReadyReplicas < 1 {
		ok = false
	}
	if err == nil {
		parts = append(parts, fmt.Sprintf("istiod-lite %d ready", dep.Status.ReadyReplicas))
	}
	for _, name := range []string{"ambient-agent", "ztunnel"} {
		ds, err := cs.AppsV1().DaemonSets("istio-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil || ds.Status.NumberReady < int32(labCfg.Nodes) || ds.Status.UpdatedNumberScheduled < int32(labCfg.Nodes) {
			ok = false
		}
		if err == nil {
			parts = append(parts, fmt.Sprintf("%s %d/%d", name, ds.Status.NumberReady, labCfg.Nodes))
		}
	}
	return ok, strings.Join(parts, ", ")
}

// waitFor polls cond every half second until it holds, or fails after timeout with what cond
// last said.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, progress := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s (%s)", timeout, what, progress)
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("waiting for %s (%s)", what, progress), ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
