package kubelet

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestContainerEnv(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "echo"}},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "sa"},
	}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	c := &corev1.Container{Env: []corev1.EnvVar{
		field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
		field("SA", "spec.serviceAccountName"), field("IP", "status.podIP"), field("NODE", "spec.nodeName"),
		field("APP", "metadata.labels['app']"),
		{Name: "GREETING", Value: "hi $(POD_NAME) $$(POD_NAME) $(MISSING)"},
	}}
	got, err := containerEnv(podEnv{Pod: pod, PodIP: "10.0.0.5", HostIP: "10.1.0.1", APIHost: "10.233.0.1", APIPort: "6443"}, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"KUBERNETES_SERVICE_HOST=10.233.0.1", "KUBERNETES_SERVICE_PORT=6443", "KUBERNETES_SERVICE_PORT_HTTPS=6443",
		"KUBERNETES_PORT=tcp://10.233.0.1:6443",
		"POD_NAME=p", "POD_NAMESPACE=ns", "SA=sa", "IP=10.0.0.5", "NODE=node-1", "APP=echo",
		"GREETING=hi p $(POD_NAME) $(MISSING)",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	if _, err := containerEnv(podEnv{Pod: pod}, &corev1.Container{Env: []corev1.EnvVar{field("X", "spec.bogus")}}); err == nil {
		t.Error("unsupported fieldRef: want error")
	}
}

func TestResourceFieldRef(t *testing.T) {
	q := resource.MustParse
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Resources: corev1.ResourceRequirements{
			Limits:   corev1.ResourceList{corev1.ResourceCPU: q("250m"), corev1.ResourceMemory: q("64Mi")},
			Requests: corev1.ResourceList{corev1.ResourceCPU: q("100m")}}},
		{Name: "side"},
	}}}
	for _, tc := range []struct {
		resource, divisor, container string
		want                         string
	}{
		{resource: "limits.cpu", want: "1"}, // 250m in cores, rounded up
		{resource: "limits.cpu", divisor: "1m", want: "250"},
		{resource: "requests.cpu", divisor: "1m", want: "100"},
		{resource: "limits.memory", divisor: "1Mi", want: "64"},
		{resource: "limits.memory", want: "67108864"},
		{resource: "requests.memory", want: "0"},               // no request
		{resource: "limits.cpu", container: "side", want: "8"}, // no limit: the node's
		{resource: "limits.memory", container: "side", divisor: "1Gi", want: "16"},
	} {
		ref := &corev1.ResourceFieldSelector{Resource: tc.resource, ContainerName: tc.container}
		if tc.divisor != "" {
			ref.Divisor = q(tc.divisor)
		}
		got, err := resourceValue(pod, &pod.Spec.Containers[0], ref)
		if err != nil || got != tc.want {
			t.Errorf("%s of %q / %q = %q, %v; want %q", tc.resource, tc.container, tc.divisor, got, err, tc.want)
		}
	}
	for _, bad := range []*corev1.ResourceFieldSelector{
		{Resource: "limits.gpu"}, {Resource: "cpu"}, {Resource: "limits.cpu", ContainerName: "nope"},
	} {
		if _, err := resourceValue(pod, &pod.Spec.Containers[0], bad); err == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
}

func TestDownwardAPIVolume(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}}}}},
	}
	dir := t.TempDir()
	err := downwardAPI(pod, []corev1.DownwardAPIVolumeFile{
		{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
		{Path: "limits/mem", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "app", Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}},
	}, dir)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"name": "p", "limits/mem": "64"} {
		if b, err := os.ReadFile(filepath.Join(dir, path)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	if err := downwardAPI(pod, []corev1.DownwardAPIVolumeFile{{Path: "x"}}, dir); err == nil {
		t.Error("a file with neither reference: want an error")
	}
}
