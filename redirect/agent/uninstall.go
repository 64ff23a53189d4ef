package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/cni"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// keepCNIInstalled chains the plugin into the node's conflist and puts it back whenever the
// primary network rewrites its file (network plugins do, on their own restarts).
func (a *Agent) keepCNIInstalled(ctx context.Context) {
	entry := cni.PluginConf{Type: cni.PluginType, AgentSocket: a.cfg.CNISocket(),
		TimeoutSeconds: int((a.cfg.AckTimeout + 5*time.Second) / time.Second)}
	var lastErr string
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		changed, err := cni.Install(a.cfg.CNIConfDir, a.cfg.CNIBinDir, a.cfg.CNIBinary, entry)
		switch {
		case err != nil && err.Error() != lastErr:
			a.log.Error("install CNI plugin: new pods in the mesh will not start until it is", "err", err)
		case err == nil && changed:
			a.log.Info("CNI plugin chained", "conf_dir", a.cfg.CNIConfDir)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// uninstallIfDeleted uninstalls when the agent's DaemonSet is gone or being deleted: that is
// how a user removes the mesh from the nodes. Any other exit (an upgrade, a node drain, a crash)
// leaves redirection in place for the next agent.
func (a *Agent) uninstallIfDeleted(ctx context.Context) error {
	if a.cfg.PodName == "" || a.cfg.Namespace == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	pod, err := a.cs.CoreV1().Pods(a.cfg.Namespace).Get(ctx, a.cfg.PodName, metav1.GetOptions{})
	if err != nil {
		return nil // cannot tell: keep redirection
	}
	for _, o := range pod.OwnerReferences {
		if o.Kind != "DaemonSet" {
			continue
		}
		ds, err := a.cs.AppsV1().DaemonSets(a.cfg.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && (ds.UID != o.UID || ds.DeletionTimestamp != nil)) {
			a.log.Info("DaemonSet deleted: uninstalling from the node", "daemonset", o.Name)
			return Uninstall(ctx, a.cfg, a.cs, a.log)
		}
	}
	return nil
}

// Uninstall removes everything the agent put on the node: the CNI entry and binary, every
// link and pin (enrolled pods go back to direct traffic), the sockets, and the redirection
// annotations of the node's pods. It is safe to repeat.
func Uninstall(ctx context.Context, cfg Config, cs kubernetes.Interface, log *slog.Logger) error {
	var errs []error
	if err := cni.Uninstall(cfg.CNIConfDir, cfg.CNIBinDir, cni.PluginType); err != nil {
		errs = append(errs, fmt.Errorf("uninstall CNI plugin: %w", err))
	}
	if err := redirect.Uninstall(cfg.Redirect); err != nil {
		errs = append(errs, fmt.Errorf("uninstall redirection: %w", err))
	}
	if cs != nil {
		pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()})
		if err != nil {
			errs = append(errs, fmt.Errorf("list pods: %w", err))
		} else {
			patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, mesh.AnnotationRedirection))
			for _, p := range pods.Items {
				if _, ok := p.Annotations[mesh.AnnotationRedirection]; !ok {
					continue
				}
				if _, err := cs.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1PatchOptions); err != nil && !apierrors.IsNotFound(err) {
					errs = append(errs, fmt.Errorf("remove annotation of %s/%s: %w", p.Namespace, p.Name, err))
				}
			}
		}
	}
	if log != nil {
		log.Info("uninstalled from the node", "node", cfg.Node, "errors", len(errs))
	}
	return errors.Join(errs...)
}

// NewClient returns the Kubernetes client of a configuration (for Uninstall from the command line).
func NewClient(cfg Config) (kubernetes.Interface, error) {
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}
