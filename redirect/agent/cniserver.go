package agent

// The CNI plugin's requests. ADD comes before the pod's containers start, so the pod is set up
// before it can open its first connection; the informer then only writes the annotation.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/ambient-mesh/ambient/redirect/cni"
	"github.com/ambient-mesh/ambient/redirect/zds"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

var everything = labels.Everything()

const modeLabel = "istio.io/dataplane-mode"

var _ cni.Handler = (*Agent)(nil)

// lookup finds the pod and its namespace, from the caches or, for a pod created a moment ago,
// from the API server.
func (a *Agent) lookup(ctx context.Context, req cni.PodRequest) (*corev1.Pod, *corev1.Namespace, error) {
	pod, err := a.podLister.Pods(req.Namespace).Get(req.Name)
	if err != nil || (req.UID != "" && string(pod.UID) != req.UID) {
		pod, err = a.cs.CoreV1().Pods(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("get pod: %w", err)
		}
	}
	ns := a.namespace(req.Namespace)
	if ns == nil {
		ns, err = a.cs.CoreV1().Namespaces().Get(ctx, req.Namespace, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, nil, fmt.Errorf("get namespace: %w", err)
		}
	}
	return pod, ns, nil
}

// CNIAdd sets a new pod up when it belongs in the mesh. An error fails the sandbox, and the
// runtime retries it: the pod never starts outside the mesh it belongs to. A pod enrolled in
// the kernel whose ztunnel is not connected is protected (its traffic is refused until ztunnel
// takes it), so it may start.
func (a *Agent) CNIAdd(ctx context.Context, req cni.PodRequest) (bool, error) {
	if req.UID == "" && req.Name == "" {
		return false, a.readyErr()
	}
	enrolled, err := a.cniAdd(ctx, req)
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.m.cniRequests.WithLabelValues("add", result).Inc()
	return enrolled, err
}

func (a *Agent) cniAdd(ctx context.Context, req cni.PodRequest) (bool, error) {
	if err := a.readyErr(); err != nil {
		return false, err
	}
	pod, ns, err := a.lookup(ctx, req)
	if err != nil {
		return false, err
	}
	if d := Wanted(ns, pod); !d.Enrol {
		return false, nil
	}
	var ips []netip.Addr
	for _, s := range req.IPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	key := pod.Namespace + "/" + pod.Name
	unlock := a.locks.lock(key)
	defer unlock()
	a.wantSince(key)
	if _, err := a.setup(ctx, pod, req.Netns, req.ContainerID, oneIPPerFamily(ips)); err != nil && !errors.Is(err, zds.ErrNoProxy) {
		return false, fmt.Errorf("set up redirection for pod %s: %w", key, err)
	}
	return true, nil
}

// CNIDel takes the sandbox's pod out; the informer does the same when the pod is deleted.
func (a *Agent) CNIDel(ctx context.Context, req cni.PodRequest) error {
	if a.readyErr() != nil {
		return nil // the rebuild after the start cleans up what this would have
	}
	key := req.Namespace + "/" + req.Name
	unlock := a.locks.lock(key)
	defer unlock()
	if st := a.state(key); st != nil && st.containerID != "" && req.ContainerID != "" && st.containerID != req.ContainerID {
		return nil // a late DEL of an earlier sandbox of the pod: the current one stays
	}
	err := a.teardownKey(ctx, key, types.UID(req.UID))
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.m.cniRequests.WithLabelValues("del", result).Inc()
	return err
}

// CNICheck reports an error when a pod that belongs in the mesh is not set up. An empty request
// is the plugin's STATUS: is the agent ready.
func (a *Agent) CNICheck(ctx context.Context, req cni.PodRequest) (bool, error) {
	if err := a.readyErr(); err != nil || (req.UID == "" && req.Name == "") {
		return false, err
	}
	pod, ns, err := a.lookup(ctx, req)
	if err != nil {
		return false, err
	}
	if !Wanted(ns, pod).Enrol {
		return false, nil
	}
	if st := a.state(pod.Namespace + "/" + pod.Name); st == nil || st.uid != pod.UID {
		return false, fmt.Errorf("pod %s/%s belongs in the mesh and is not set up", pod.Namespace, pod.Name)
	}
	return true, nil
}

func (a *Agent) readyErr() error {
	if !a.ready.Load() {
		return cni.ErrNotReady
	}
	return nil
}
