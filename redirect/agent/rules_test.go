package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestWanted(t *testing.T) {
	ns := func(labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: labels}}
	}
	pod := func(labels map[string]string, hostNet bool) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: labels}, Spec: corev1.PodSpec{HostNetwork: hostNet}}
	}
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	none := map[string]string{"istio.io/dataplane-mode": "none"}
	other := map[string]string{"istio.io/dataplane-mode": "sidecar"}
	for _, tc := range []struct {
		name string
		ns   *corev1.Namespace
		pod  *corev1.Pod
		want bool
	}{
		{"namespace label enrols its pods", ns(ambient), pod(nil, false), true},
		{"no label anywhere", ns(nil), pod(nil, false), false},
		{"pod label alone enrols", ns(nil), pod(ambient, false), true},
		{"pod label none opts out of an enrolled namespace", ns(ambient), pod(none, false), false},
		{"pod label none in a plain namespace", ns(nil), pod(none, false), false},
		{"unknown pod value falls back to the namespace", ns(ambient), pod(other, false), true},
		{"unknown namespace value enrols nothing", ns(other), pod(nil, false), false},
		{"namespace value none enrols nothing", ns(none), pod(nil, false), false},
		{"hostNetwork never, even with the pod label", ns(ambient), pod(ambient, true), false},
		{"hostNetwork never, namespace label", ns(ambient), pod(nil, true), false},
		{"unknown namespace: pod label still counts", nil, pod(ambient, false), true},
		{"unknown namespace: nothing else enrols", nil, pod(nil, false), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Wanted(tc.ns, tc.pod)
			if d.Enrol != tc.want {
				t.Errorf("Wanted = %v (%s), want %v", d.Enrol, d.Reason, tc.want)
			}
			if d.Reason == "" {
				t.Error("no reason given")
			}
		})
	}
}
