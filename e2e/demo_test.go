//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/demo"
)

// TestDemo runs `make demo`'s walk through, non-interactively, on the shared lab and checks what
// each step showed (not its wording); then uninstalls the mesh as the README says and checks
// nothing of it is left.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cs := client(t)
	t.Cleanup(func() { uninstallDeploy(t) })
	var out bytes.Buffer
	o, err := demo.Run(ctx, labCfg, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	t.Logf("demo output:\n%s", out.String())
	if !o.PlaintextReadable {
		t.Error("before enrolling, the capture did not read the message")
	}
	if len(o.Enrolled) != 3 {
		t.Errorf("enrolled pods %v, want the 3 of the application", o.Enrolled)
	}
	if len(o.Before) != 3 || !maps.Equal(o.Before, o.After) {
		t.Errorf("pods changed across the enrollment: before %v, after %v", o.Before, o.After)
	}
	if !o.MessageHidden || o.HBONEPackets == 0 {
		t.Errorf("in the mesh: message hidden %v, packets to 15008 %d", o.MessageHidden, o.HBONEPackets)
	}
	if o.AccessLog == "" || o.OpenedAfter < o.OpenedBefore+3 {
		t.Errorf("access log %q, connections opened %v -> %v", o.AccessLog, o.OpenedBefore, o.OpenedAfter)
	}
	if !o.Denied || !o.Allowed || o.StatusExit != 0 {
		t.Errorf("denied %v, allowed again %v, status exit %d", o.Denied, o.Allowed, o.StatusExit)
	}
	// A second run starts from what the first left (the namespace enrolled) and shows the same.
	out.Reset()
	start := time.Now()
	o2, err := demo.Run(ctx, labCfg, &out)
	if err != nil || !o2.PlaintextReadable || !o2.MessageHidden || !o2.Denied || !o2.Allowed {
		t.Fatalf("second run: %v, %+v\n%s", err, o2, out.String())
	}
	t.Logf("second run of the walk through: %s", time.Since(start).Round(time.Millisecond))
	if err := cs.CoreV1().Namespaces().Delete(ctx, demo.Namespace, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// uninstallDeploy removes what `kubectl apply -k deploy/` installed, in the order deploy/README.md
// gives (the agent first, while it may still read its DaemonSet, so that it lifts redirection),
// waits until it is gone, and checks that the cluster is as it was: no pin, link, CNI entry or
// binary on any node (uninstallAgent), no root ConfigMap, no redirection annotation on any pod, no
// webhook.
func uninstallDeploy(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	uninstallAgent(t, cs)
	if out, err := kubectlCmd(ctx, "delete", "-k", "../deploy", "--ignore-not-found", "--wait").CombinedOutput(); err != nil {
		t.Errorf("kubectl delete -k deploy/: %v: %s", err, out)
	}
	eventually(t, 2*time.Minute, "istio-system gone", func() bool {
		_, err := cs.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		return err != nil
	})
	// istiod-lite's root ConfigMaps are owned by istio-system: the garbage collector takes them.
	eventually(t, 60*time.Second, "no istio-ca-root-cert ConfigMap left", func() bool {
		cms, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=istio-ca-root-cert"})
		return err == nil && len(cms.Items) == 0
	})
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if v, ok := p.Annotations[mesh.AnnotationRedirection]; ok {
			t.Errorf("pod %s/%s still annotated %s=%s after uninstall", p.Namespace, p.Name, mesh.AnnotationRedirection, v)
		}
	}
	vw, err1 := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	mw, err2 := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err1 != nil || err2 != nil || len(vw.Items)+len(mw.Items) != 0 {
		t.Errorf("webhooks after uninstall: %v %v %v", vw, mw, errors.Join(err1, err2))
	}
}
