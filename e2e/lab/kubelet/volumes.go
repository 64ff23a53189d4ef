package kubelet

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumes materialises a pod's volumes as directories on the node and returns, per volume
// name, the directory to bind into the pod.
type volumes struct {
	cs         kubernetes.Interface
	nodeRoot   string // hostPath volumes resolve under it (see hostPathSource)
	nodeCgroup string
}

func (v volumes) prepare(ctx context.Context, pod *corev1.Pod, podDir string) (map[string]string, error) {
	out := map[string]string{}
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
		case vol.Projected != nil:
			err = v.projected(ctx, pod, vol.Projected, dir)
		default:
			err = fmt.Errorf("unsupported volume type")
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		out[vol.Name] = dir
	}
	return out, nil
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
// token is requested from the API server bound to this pod, as a kubelet does.
func (v volumes) projected(ctx context.Context, pod *corev1.Pod, p *corev1.ProjectedVolumeSource, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, src := range p.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := src.ServiceAccountToken
			exp := int64(3600)
			if t.ExpirationSeconds != nil {
				exp = *t.ExpirationSeconds
			}
			var aud []string
			if t.Audience != "" {
				aud = []string{t.Audience}
			}
			tr, err := v.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
				Spec: authv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: &exp,
					BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
			}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("service-account token for %s/%s: %w", pod.Namespace, pod.Spec.ServiceAccountName, err)
			}
			if err := writeItems(dir, map[string][]byte{t.Path: []byte(tr.Status.Token)}, nil); err != nil {
				return err
			}
		case src.ConfigMap != nil:
			if err := v.configMap(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, optional(src.ConfigMap.Optional), dir); err != nil {
				return err
			}
		case src.Secret != nil:
			if err := v.secret(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, optional(src.Secret.Optional), dir); err != nil {
				return err
			}
		case src.DownwardAPI != nil:
			data := map[string][]byte{}
			var items []corev1.KeyToPath
			for _, f := range src.DownwardAPI.Items {
				if f.FieldRef == nil {
					return fmt.Errorf("downwardAPI %s: only fieldRef is supported", f.Path)
				}
				val, err := fieldValue(podEnv{Pod: pod}, f.FieldRef.FieldPath)
				if err != nil {
					return err
				}
				data[f.Path] = []byte(val)
				items = append(items, corev1.KeyToPath{Key: f.Path, Path: f.Path})
			}
			if err := writeItems(dir, data, items); err != nil {
				return err
			}
		}
	}
	return nil
}
