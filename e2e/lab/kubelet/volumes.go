package kubelet

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumes materialises a pod's volumes as directories on the node and returns, per volume
// name, the directory to bind into the pod.
type volumes struct {
	cs          kubernetes.Interface
	nodeRoot    string // hostPath volumes resolve under it (see hostPathSource)
	nodeCgroup  string
	tokenMaxAge time.Duration // see tokens.go
}

// prepare returns the directory of each volume and the service-account tokens to keep fresh.
func (v volumes) prepare(ctx context.Context, pod *corev1.Pod, podDir string) (map[string]string, []*projectedToken, error) {
	out := map[string]string{}
	var tokens []*projectedToken
	for _, vol := range pod.Spec.Volumes {
		dir := filepath.Join(podDir, "volumes", vol.Name)
		var err error
		switch {
		case vol.EmptyDir != nil:
			err = os.MkdirAll(dir, 0o777)
		case vol.HostPath != nil:
			dir, err = prepareHostPath(v.nodeRoot, v.nodeCgroup, vol.HostPath)
		case vol.ConfigMap != nil:
			err = v.configMap(ctx, pod.Namespace, vol.ConfigMap.Name, vol.ConfigMap.Items, optional(vol.ConfigMap.Optional), dir)
		case vol.Secret != nil:
			err = v.secret(ctx, pod.Namespace, vol.Secret.SecretName, vol.Secret.Items, optional(vol.Secret.Optional), dir)
		case vol.DownwardAPI != nil:
			if err = os.MkdirAll(dir, 0o755); err == nil {
				err = downwardAPI(pod, vol.DownwardAPI.Items, dir)
			}
		case vol.Projected != nil:
			var ts []*projectedToken
			ts, err = v.projected(ctx, pod, vol.Projected, dir)
			tokens = append(tokens, ts...)
		default:
			err = fmt.Errorf("unsupported volume type")
		}
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		out[vol.Name] = dir
	}
	return out, tokens, nil
}

func optional(b *bool) bool { return b != nil && *b }

func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(items) == 0 {
		for _, k := range slices.Sorted(maps.Keys(data)) {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("key %q not found", it.Key)
		}
		p := filepath.Join(dir, filepath.Clean("/"+it.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (v volumes) configMap(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt bool, dir string) error {
	cm, err := v.cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, s := range cm.Data {
		data[k] = []byte(s)
	}
	for k, b := range cm.BinaryData {
		data[k] = b
	}
	return writeItems(dir, data, items)
}

func (v volumes) secret(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt bool, dir string) error {
	s, err := v.cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return writeItems(dir, s.Data, items)
}

// projected writes the sources of a projected volume into one directory; the service-account
// tokens are requested from the API server bound to this pod, as a kubelet does, and returned
// for their refresh (tokens.go).
// downwardAPI writes a downwardAPI volume's (or projection's) files: pod fields, and containers'
// limits and requests (resourceFieldRef, which names its container in a volume).
func downwardAPI(pod *corev1.Pod, files []corev1.DownwardAPIVolumeFile, dir string) error {
	data := map[string][]byte{}
	var items []corev1.KeyToPath
	for _, f := range files {
		var val string
		var err error
		switch {
		case f.FieldRef != nil:
			val, err = fieldValue(podEnv{Pod: pod}, f.FieldRef.FieldPath)
		case f.ResourceFieldRef != nil:
			val, err = resourceValue(pod, &corev1.Container{}, f.ResourceFieldRef)
		default:
			err = fmt.Errorf("downwardAPI %s: neither fieldRef nor resourceFieldRef", f.Path)
		}
		if err != nil {
			return err
		}
		data[f.Path] = []byte(val)
		items = append(items, corev1.KeyToPath{Key: f.Path, Path: f.Path})
	}
	return writeItems(dir, data, items)
}

func (v volumes) projected(ctx context.Context, pod *corev1.Pod, p *corev1.ProjectedVolumeSource, dir string) ([]*projectedToken, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var tokens []*projectedToken
	for _, src := range p.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := &projectedToken{src: src.ServiceAccountToken, path: filepath.Join(dir, filepath.Clean("/"+src.ServiceAccountToken.Path))}
			if err := v.writeToken(ctx, pod, t, time.Now()); err != nil {
				return nil, err
			}
			tokens = append(tokens, t)
		case src.ConfigMap != nil:
			if err := v.configMap(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, optional(src.ConfigMap.Optional), dir); err != nil {
				return nil, err
			}
		case src.Secret != nil:
			if err := v.secret(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, optional(src.Secret.Optional), dir); err != nil {
				return nil, err
			}
		case src.DownwardAPI != nil:
			if err := downwardAPI(pod, src.DownwardAPI.Items, dir); err != nil {
				return nil, err
			}
		}
	}
	return tokens, nil
}
