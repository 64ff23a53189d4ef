package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
	access := filepath.Join(a.cfg.CNIConfDir, cni.APIAccessFile)
	entry := cni.PluginConf{Type: cni.PluginType, AgentSocket: a.cfg.CNISocket(),
		TimeoutSeconds: int((a.cfg.AckTimeout + 5*time.Second) / time.Second), APIAccess: access}
	var lastErr string
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		// The credentials first: the entry that names them must not come before them.
		err := a.writeAPIAccess(access)
		changed := false
		if err == nil {
			changed, err = cni.Install(a.cfg.CNIConfDir, a.cfg.CNIBinDir, a.cfg.CNIBinary, entry)
		}
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

// writeAPIAccess keeps the plugin's fallback credentials current: the API server, its CA and
// the agent's own token, which the kubelet rotates.
func (a *Agent) writeAPIAccess(path string) error {
	acc := cni.APIAccess{Server: a.rc.Host, CAData: a.rc.TLSClientConfig.CAData, Token: a.rc.BearerToken}
	if len(acc.CAData) == 0 && a.rc.TLSClientConfig.CAFile != "" {
		b, err := os.ReadFile(a.rc.TLSClientConfig.CAFile)
		if err != nil {
			return fmt.Errorf("read API server CA: %w", err)
		}
		acc.CAData = b
	}
	if a.rc.BearerTokenFile != "" {
		b, err := os.ReadFile(a.rc.BearerTokenFile)
		if err != nil {
			return fmt.Errorf("read service account token: %w", err)
		}
		acc.Token = strings.TrimSpace(string(b))
	}
	if _, err := cni.WriteAPIAccess(path, acc); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
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
	// After the entry that names it is gone.
	if err := os.Remove(filepath.Join(cfg.CNIConfDir, cni.APIAccessFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
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
