package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

const heartbeat = 10 * time.Second

// registerNode creates the Node object (or takes over an existing one) with the node's pod CIDR
// and address, and marks it Ready.
func registerNode(ctx context.Context, cs kubernetes.Interface, cfg Config) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.Node, Labels: map[string]string{
			"kubernetes.io/hostname": cfg.Node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		}},
		Spec: corev1.NodeSpec{PodCIDR: cfg.PodCIDR, PodCIDRs: []string{cfg.PodCIDR}},
	}
	_, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", cfg.Node, err)
	}
	return updateNodeStatus(ctx, cs, cfg)
}

func updateNodeStatus(ctx context.Context, cs kubernetes.Interface, cfg Config) error {
	n, err := cs.CoreV1().Nodes().Get(ctx, cfg.Node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	capacity := nodeCapacity()
	n.Status.Capacity, n.Status.Allocatable = capacity, capacity
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: cfg.NodeIP}, {Type: corev1.NodeHostName, Address: cfg.Node}}
	if cfg.TLSCertFile != "" {
		port := cfg.ServerPort
		if port == 0 {
			port = DefaultServerPort
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	}
	n.Status.NodeInfo.KubeletVersion = "v1.37.2-lab"
	n.Status.NodeInfo.OperatingSystem, n.Status.NodeInfo.Architecture = "linux", "amd64"
	n.Status.NodeInfo.ContainerRuntimeVersion = "ambient-lab://1"
	conds := []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "lab kubelet is posting ready status"},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
	}
	for i := range conds {
		conds[i].LastHeartbeatTime = now
		conds[i].LastTransitionTime = now
		for _, old := range n.Status.Conditions {
			if old.Type == conds[i].Type && old.Status == conds[i].Status {
				conds[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	n.Status.Conditions = conds
	_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// keepAlive renews the node's Lease and status until ctx ends.
func keepAlive(ctx context.Context, cs kubernetes.Interface, cfg Config, log *slog.Logger) {
	leases := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, cfg.Node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: cfg.Node},
				Spec:       coordv1.LeaseSpec{HolderIdentity: ptr.To(cfg.Node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("renew node lease", "err", err)
		}
		if err := updateNodeStatus(ctx, cs, cfg); err != nil && ctx.Err() == nil {
			log.Warn("update node status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nodeCapacity is what a lab node reports it has (and all of it allocatable): a fixed size, so
// that scheduling in the lab does not depend on the machine; a container without a limit sees it
// through resourceFieldRef, as on a real node.
func nodeCapacity() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
}
