package kubelet

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// podEnv is what a container's environment is computed from.
type podEnv struct {
	Pod     *corev1.Pod
	PodIP   string
	HostIP  string
	APIHost string
	APIPort string
}

// containerEnv returns the container's environment: the Kubernetes service variables, then the
// container's env in order, with downward-API field and resource references resolved. Unknown references are
// an error naming the variable, as a real kubelet reports them.
func containerEnv(e podEnv, c *corev1.Container) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	if e.APIHost != "" {
		set("KUBERNETES_SERVICE_HOST", e.APIHost)
		set("KUBERNETES_SERVICE_PORT", e.APIPort)
		set("KUBERNETES_SERVICE_PORT_HTTPS", e.APIPort)
		set("KUBERNETES_PORT", "tcp://"+e.APIHost+":"+e.APIPort)
	}
	for _, ev := range c.Env {
		switch {
		case ev.ValueFrom == nil:
			set(ev.Name, expand(ev.Value, vars))
		case ev.ValueFrom.FieldRef != nil:
			v, err := fieldValue(e, ev.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", ev.Name, err)
			}
			set(ev.Name, v)
		case ev.ValueFrom.ResourceFieldRef != nil:
			v, err := resourceValue(e.Pod, c, ev.ValueFrom.ResourceFieldRef)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", ev.Name, err)
			}
			set(ev.Name, v)
		default:
			return nil, fmt.Errorf("env %s: only value, fieldRef and resourceFieldRef are supported", ev.Name)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

// expand resolves $(VAR) references to earlier variables, as Kubernetes does.
func expand(s string, vars map[string]string) string {
	out := []byte{}
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) && s[i+1] == '$' {
			out = append(out, '$')
			i++
			continue
		}
		if s[i] == '$' && i+1 < len(s) && s[i+1] == '(' {
			if j := strings.IndexByte(s[i+2:], ')'); j >= 0 {
				name := s[i+2 : i+2+j]
				if v, ok := vars[name]; ok {
					out = append(out, v...)
					i += 2 + j
					continue
				}
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fieldValue(e podEnv, path string) (string, error) {
	p := e.Pod
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP":
		return e.PodIP, nil
	case "status.podIPs":
		return e.PodIP, nil
	case "status.hostIP", "status.hostIPs":
		return e.HostIP, nil
	}
	if k, ok := subscript(path, "metadata.labels"); ok {
		return p.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return p.Annotations[k], nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func subscript(path, prefix string) (string, bool) {
	if len(path) > len(prefix)+4 && path[:len(prefix)] == prefix && path[len(prefix)] == '[' && path[len(path)-1] == ']' {
		k := path[len(prefix)+1 : len(path)-1]
		if len(k) >= 2 && (k[0] == '\'' || k[0] == '"') && k[len(k)-1] == k[0] {
			return k[1 : len(k)-1], true
		}
	}
	return "", false
}

// resourceValue resolves a resourceFieldRef as a kubelet does: the named container's (default:
// c) limit or request, in units of the divisor rounded up; a missing limit is the node's
// allocatable amount, a missing request 0.
func resourceValue(pod *corev1.Pod, c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		i := slices.IndexFunc(pod.Spec.Containers, func(o corev1.Container) bool { return o.Name == ref.ContainerName })
		if i < 0 {
			return "", fmt.Errorf("resourceFieldRef: no container %q", ref.ContainerName)
		}
		c = &pod.Spec.Containers[i]
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") ||
		(name != string(corev1.ResourceCPU) && name != string(corev1.ResourceMemory) && name != string(corev1.ResourceEphemeralStorage)) {
		return "", fmt.Errorf("resourceFieldRef: unsupported resource %q", ref.Resource)
	}
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok && kind == "limits" {
		q = nodeCapacity()[corev1.ResourceName(name)] // zero for ephemeral storage: the lab reports none
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if name == string(corev1.ResourceCPU) {
		return strconv.FormatInt(ceilDiv(q.MilliValue(), divisor.MilliValue()), 10), nil
	}
	return strconv.FormatInt(ceilDiv(q.Value(), divisor.Value()), 10), nil
}

func ceilDiv(a, b int64) int64 {
	if b <= 0 {
		return a
	}
	return (a + b - 1) / b
}
