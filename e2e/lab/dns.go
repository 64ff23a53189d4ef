package lab

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

//go:embed manifests/coredns.yaml
var corednsManifest []byte

//go:embed manifests/kubelet-api.yaml
var kubeletAPIManifest []byte

// Apply applies a manifest to the lab with its kubectl.
func Apply(ctx context.Context, cfg Config, manifest []byte) error {
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.StateDir(), "bin", "kubectl"), "--kubeconfig", cfg.Kubeconfig(), "apply", "-f", "-")
	cmd.Stdin = bytes.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// deployDNS runs CoreDNS as the cluster DNS and waits until it is available.
func deployDNS(ctx context.Context, cfg Config) error {
	if err := Apply(ctx, cfg, corednsManifest); err != nil {
		return fmt.Errorf("cluster dns: %w", err)
	}
	cs, err := Client(cfg)
	if err != nil {
		return err
	}
	var d *appsv1.Deployment
	err = poll(ctx, 30*time.Second, func() bool {
		d, err = cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas >= 1
	})
	if err != nil {
		return fmt.Errorf("cluster dns not ready (see %s): %w", filepath.Join(cfg.StateDir(), "nodes"), err)
	}
	return nil
}
