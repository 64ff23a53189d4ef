//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/e2e/images"
	"github.com/ambient-mesh/ambient/e2e/lab"
	"github.com/ambient-mesh/ambient/ztunnel/certs"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestZtunnelRollingRestart restarts ztunnel the way a user upgrades it (the DaemonSet's rolling
// update: the new pod starts beside the old one, which is sent SIGTERM once the new one is ready)
// while a client in the mesh opens a new connection every 50 ms to echo pods on both nodes and
// by Service, and holds one long connection across the restart. No new connection may fail, and
// the long one must finish: the old ztunnel drains it instead of cutting it.
func TestZtunnelRollingRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := client(t)
	installMesh(t, cs)
	ns := newNamespace(t, cs, "restart")
	echo := deployEcho(t, cs, ns)
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	eventually(t, 30*time.Second, "every pod enabled", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	clientBin := filepath.Join(labCfg.BinDir, "client")
	targets := []string{"echo." + ns + ":9090"}
	for _, p := range echo {
		target := p.Status.PodIP + ":9090"
		targets = append(targets, target)
		eventually(t, 30*time.Second, "tcp echo through ztunnel to "+p.Name, func() bool {
			got, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "3s", "tcp", target, "hi")
			return err == nil && got == "hi"
		})
	}

	// The long connection: 40 exchanges, one every 200 ms, to the echo pod on the other node,
	// so that it goes through the ztunnels of both nodes.
	_, remote, _ := echoByNode(t, cs, ns, echo)
	held := make(chan string, 1)
	go func() {
		out, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "5s", "hold", remote.Status.PodIP+":9090", "40", "200ms")
		if err != nil {
			out += " (" + err.Error() + ")"
		}
		held <- out
	}()

	load, err := lab.ExecCommand(ctx, labCfg, ns, "client", append([]string{clientBin, "-timeout", "5s", "load", "50ms"}, targets...)...)
	if err != nil {
		t.Fatal(err)
	}
	var loadOut, loadErr bytes.Buffer
	load.Stdout, load.Stderr = &loadOut, &loadErr
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}

	old := map[types.UID]string{}
	pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		old[p.UID] = p.Spec.NodeName
	}
	start := time.Now()
	kubectl(t, "-n", "istio-system", "rollout", "restart", "daemonset/ztunnel")
	eventually(t, 3*time.Minute, "every old ztunnel replaced by a ready new one", func() bool {
		pods, err := cs.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
		if err != nil {
			return false
		}
		fresh := 0
		for _, p := range pods.Items {
			if _, ok := old[p.UID]; ok {
				return false
			}
			if podReady(&p) {
				fresh++
			}
		}
		return fresh == labCfg.Nodes
	})
	t.Logf("rolling restart of %d ztunnels took %s", labCfg.Nodes, time.Since(start).Round(time.Millisecond))
	// A few more connections through the new ztunnels only, then the report.
	for _, target := range targets {
		if got, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "3s", "tcp", target, "after"); err != nil || got != "after" {
			t.Errorf("after the restart, echo to %s = %q, %v", target, got, err)
		}
	}
	_ = load.Process.Signal(syscall.SIGTERM)
	if err := load.Wait(); err != nil {
		t.Fatalf("load client: %v\n%s", err, loadErr.String())
	}
	var rep images.LoadReport
	if err := json.Unmarshal(loadOut.Bytes(), &rep); err != nil {
		t.Fatalf("load report %q: %v", loadOut.String(), err)
	}
	t.Logf("connections during the restart: %d ok, %d failed, slowest %s", rep.OK, rep.Failed, rep.Slowest)
	if rep.Failed > 0 {
		t.Errorf("%d of %d new connections failed during the rolling restart:\n  %s", rep.Failed, rep.OK+rep.Failed, strings.Join(rep.Errors, "\n  "))
	}
	if rep.OK == 0 {
		t.Error("the load client made no connection")
	}
	if out := <-held; !strings.Contains(out, "held 40 exchanges") {
		t.Errorf("the connection open across the restart did not finish: %s", out)
	}
}

// TestZtunnelCertificateRenewal runs the mesh with workload certificates that live 40 seconds.
// ztunnel must renew each before it expires (at half-life), and traffic between the nodes over
// mutual TLS must go on past the first certificate's expiry: only a renewed one can carry it.
func TestZtunnelCertificateRenewal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cs := client(t)
	installMesh(t, cs, "--cert-ttl=40s", "--max-cert-ttl=40s")
	ns := newNamespace(t, cs, "renew")
	echo := deployEcho(t, cs, ns)
	labelNamespace(t, cs, ns, mesh.DataplaneModeAmbient)
	eventually(t, 30*time.Second, "every pod enabled", func() bool { return allAnnotated(t, cs, ns, mesh.RedirectionEnabled) })
	clientPod, remote, _ := echoByNode(t, cs, ns, echo)
	clientBin := filepath.Join(labCfg.BinDir, "client")
	echoRemote := func(msg string) error {
		got, err := lab.Exec(ctx, labCfg, ns, "client", clientBin, "-timeout", "3s", "tcp", remote.Status.PodIP+":9090", msg)
		if err == nil && got != msg {
			err = fmt.Errorf("echoed %q", got)
		}
		return err
	}
	eventually(t, 30*time.Second, "cross-node echo over HBONE", func() bool { return echoRemote("first") == nil })

	// The certificate of the client's identity, as its node's ztunnel shows it.
	zt := podOn(t, cs, "istio-system", "app=ztunnel", clientPod.Spec.NodeName)
	id := "spiffe://cluster.local/ns/" + ns + "/sa/default"
	cert := func() certs.CertInfo {
		out, err := lab.Exec(ctx, labCfg, "istio-system", zt.Name, clientBin, "http", "http://127.0.0.1:15000/debug/config_dump")
		if err != nil {
			t.Fatalf("config dump: %v: %s", err, out)
		}
		var dump struct{ Certificates []certs.CertInfo }
		if err := json.Unmarshal([]byte(out), &dump); err != nil {
			t.Fatalf("config dump %q: %v", out, err)
		}
		for _, c := range dump.Certificates {
			if c.Identity == id {
				return c
			}
		}
		t.Fatalf("no certificate for %s in the config dump: %s", id, out)
		return certs.CertInfo{}
	}
	first := cert()
	if first.State != certs.StateValid || time.Until(first.NotAfter) > time.Minute {
		t.Fatalf("first certificate: %+v, want valid with a 40 s lifetime", first)
	}
	eventually(t, time.Minute, "the certificate renewed before it expires", func() bool {
		c := cert()
		return c.State == certs.StateValid && c.NotAfter.After(first.NotAfter)
	})
	renewed := cert()
	if time.Now().After(first.NotAfter) {
		t.Errorf("renewed only after the first certificate expired at %s", first.NotAfter.Format(time.RFC3339))
	}
	eventually(t, time.Minute, "the first certificate's expiry has passed", func() bool { return time.Now().After(first.NotAfter.Add(time.Second)) })
	if err := echoRemote("after expiry"); err != nil {
		t.Errorf("cross-node echo after the first certificate expired (renewed one until %s): %v", renewed.NotAfter.Format(time.RFC3339), err)
	}
}
