//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/lab"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestMeshL4 runs the mesh as a user installs it (istiod-lite, the node agent and ztunnel from
// deploy/), labels a namespace with running pods, and checks that their traffic crosses nodes
// and stays on a node through ztunnel over HBONE (the destination's access log names the
// client's identity over mutual TLS), by pod IP and by Service name; that an
// AuthorizationPolicy denying the client's identity stops new connections and its removal lets
// them through again; that STRICT refuses a plaintext client PERMISSIVE lets in; and that traffic
// goes on while istiod-lite is stopped.
func TestMeshL4(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cs := client(t)
	installMesh(t, cs)
	// The manifest's memory limit holds in the lab, and ztunnel sized its Go heap from it.
	zts, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range zts.Items {
		if l := containerLog(t, &zts.Items[i], "ztunnel"); !strings.Contains(l, `"msg":"memory limit from cgroup"`) ||
			!strings.Contains(l, `"cgroupLimitBytes":134217728`) {
			t.Errorf("ztunnel %s did not set its Go memory limit from its 128Mi container limit; its log:\n%s", zts.Items[i].Name, l)
		}
	}

	ns := newNamespace(t, cs, "mesh")
	echo := deployEcho(t, cs, ns)
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	eventually(t, 30*time.Second, "every pod enabled", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	clientBin := filepath.Join(labCfg.BinDir, "client")
	tcp := func(addr, msg string) (string, error) {
		return lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "3s", "tcp", addr, msg)
	}

	// By pod IP, to both echo pods: one on the client's node, one on the other.
	for _, p := range echo {
		msg := "to " + p.Name
		eventually(t, 30*time.Second, "tcp echo through ztunnel to "+p.Name, func() bool {
			got, err := tcp(p.Status.PodIP+":9090", msg)
			return err == nil && got == msg
		})
	}
	// By Service name: DNS, the VIP captured, an endpoint chosen by ztunnel.
	if got, err := tcp("echo."+ns+":9090", "via service"); err != nil || got != "via service" {
		t.Errorf("tcp echo via the Service = %q, %v", got, err)
	}
	out := execIn(t, ns, "client", clientBin, "http", "http://echo."+ns+"/hello")
	if !strings.Contains(out, `"path":"/hello"`) {
		t.Errorf("HTTP via the Service = %q", out)
	}

	// On the wire between the nodes there is TLS to port 15008 only: the payload never appears.
	clientPod, err := cs.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range echo {
		if p.Spec.NodeName == clientPod.Spec.NodeName {
			continue
		}
		const secret = "the-payload-must-never-cross-the-lab-network-in-the-clear"
		pcap := captureLab(t, func() {
			if got, err := tcp(p.Status.PodIP+":9090", secret); err != nil || got != secret {
				t.Errorf("echo during the capture = %q, %v", got, err)
			}
		})
		if strings.Contains(string(pcap.raw), secret) {
			t.Error("the payload crossed the lab network in the clear")
		}
		if pcap.hbone == 0 {
			t.Errorf("no packet to or from port 15008 between the nodes:\n%s", pcap.summary)
		}
	}

	// The destination's ztunnel saw the client's identity over mutual TLS.
	principal := "cluster.local/ns/" + ns + "/sa/default"
	eventually(t, 20*time.Second, "destination access log with the client's identity", func() bool {
		for i := 1; i <= labCfg.Nodes; i++ {
			zt := podOn(t, cs, "istio-system", "app=ztunnel", fmt.Sprintf("node-%d", i))
			log := containerLog(t, zt, "ztunnel")
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, `"reporter":"destination"`) && strings.Contains(line, `"src_principal":"`+principal+`"`) &&
					strings.Contains(line, `"security":"mutual_tls"`) && strings.Contains(line, `"result":"ok"`) {
					return true
				}
			}
		}
		return false
	})

	// L4 policy: deny the client's identity at the echo pods; then remove it.
	apply(t, ns, []byte(fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["%s"]}}]}]
`, principal)))
	eventually(t, 30*time.Second, "the DENY policy stops new connections", func() bool {
		_, err := tcp(echo[0].Status.PodIP+":9090", "denied?")
		return err != nil
	})
	kubectl(t, "-n", ns, "delete", "authorizationpolicies.security.istio.io", "deny-client")
	eventually(t, 30*time.Second, "connections allowed again once the policy is gone", func() bool {
		got, err := tcp(echo[0].Status.PodIP+":9090", "again")
		return err == nil && got == "again"
	})
	// PeerAuthentication: a client outside the mesh gets in under PERMISSIVE (the default), not
	// under STRICT.
	outside := newNamespace(t, cs, "outside")
	apply(t, outside, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: outsider}\nspec:\n  containers: [{name: c, image: ambient/client}]\n"))
	eventually(t, 60*time.Second, "outsider running", func() bool { return running(ctx, cs, outside, "outsider") })
	plain := func() (string, error) {
		return lab.Exec(ctx, labCfg, outside, "outsider", clientBin, "-timeout", "3s", "tcp", echo[0].Status.PodIP+":9090", "plain")
	}
	if got, err := plain(); err != nil || got != "plain" {
		t.Errorf("plaintext client under PERMISSIVE = %q, %v; want let in", got, err)
	}
	apply(t, ns, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec:\n  mtls: {mode: STRICT}\n"))
	eventually(t, 30*time.Second, "STRICT refuses the plaintext client", func() bool {
		_, err := plain()
		return err != nil
	})
	if got, err := tcp(echo[0].Status.PodIP+":9090", "mtls"); err != nil || got != "mtls" {
		t.Errorf("mesh client under STRICT = %q, %v; want let in", got, err)
	}
	kubectl(t, "-n", ns, "delete", "peerauthentications.security.istio.io", "default")
	eventually(t, 30*time.Second, "plaintext let in again", func() bool {
		got, err := plain()
		return err == nil && got == "plain"
	})

	// The control plane away: traffic goes on with the last configuration and certificates.
	kubectl(t, "-n", "istio-system", "scale", "deployment", "istiod-lite", "--replicas=0")
	eventually(t, 60*time.Second, "istiod-lite stopped", func() bool {
		pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod-lite"})
		return err == nil && len(pods.Items) == 0
	})
	for _, p := range echo {
		if got, err := tcp(p.Status.PodIP+":9090", "no control plane"); err != nil || got != "no control plane" {
			t.Errorf("with istiod-lite stopped, echo to %s = %q, %v", p.Name, got, err)
		}
	}
	kubectl(t, "-n", "istio-system", "scale", "deployment", "istiod-lite", "--replicas=1")

	for _, p := range echo {
		if p, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{}); err != nil || !podReady(p) || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("echo pod %s not ready or restarted while in the mesh: %v", p.Name, err)
		}
	}
}

// installMesh installs the mesh as a user does: istiod-lite, the node agent and ztunnel from
// deploy/, and waits for ztunnel to be ready on every node. Cleanup removes them. istiodArgs
// are added to istiod-lite's.
func installMesh(t testing.TB, cs kubernetes.Interface, istiodArgs ...string) {
	t.Helper()
	deployIstiod(t, cs, 1, istiodArgs...)
	deployAgent(t, cs)
	b, err := os.ReadFile("../deploy/ztunnel/ztunnel.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, "istio-system", b)
	t.Cleanup(func() {
		deleteAndWait(t, cs, "istio-system", "app=ztunnel", func() error {
			return cs.AppsV1().DaemonSets("istio-system").Delete(context.Background(), "ztunnel", metav1.DeleteOptions{})
		})
	})
	eventually(t, 90*time.Second, "ztunnel ready on every node", func() bool {
		return readyOnNodes(cs, "istio-system", "app=ztunnel") == labCfg.Nodes
	})
}

type capture struct {
	raw     []byte
	hbone   int    // packets to or from port 15008
	summary string // tcpdump's reading of the first packets
}

// captureLab records the TCP packets crossing the lab switch (every port of the bridge between
// the nodes) while fn runs.
func captureLab(t *testing.T, fn func()) capture {
	t.Helper()
	ctx := context.Background()
	c, err := lab.CaptureSwitch(ctx, t.TempDir(), "tcp port 15008", func() error { fn(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	all, err := c.Packets(ctx, "net 10.234.0.0/16", false, 20)
	return capture{raw: c.Raw, hbone: c.Count(ctx, "tcp port 15008"),
		summary: fmt.Sprintf("%d bytes captured; %s %v", len(c.Raw), all, err)}
}
