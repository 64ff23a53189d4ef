package model

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ScaleInput is a cluster of pods spread over 100 nodes and 100 namespaces, 10 pods per service.
func ScaleInput(pods, services int) Input {
	var in Input
	for n := range 100 {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("ns-%d", n), Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}})
	}
	for s := range services {
		in.Services = append(in.Services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", s), Namespace: fmt.Sprintf("ns-%d", s%100)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": fmt.Sprintf("app-%d", s)},
				ClusterIP: fmt.Sprintf("10.96.%d.%d", s/250, s%250+1),
				Ports:     []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}},
		})
	}
	for p := range pods {
		s := p % services
		in.Pods = append(in.Pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", p), Namespace: fmt.Sprintf("ns-%d", s%100),
				UID: types.UID(fmt.Sprintf("uid-%d", p)), Labels: map[string]string{"app": fmt.Sprintf("app-%d", s)},
				Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", p%100),
				Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.%d.%d.%d", 1+p/65000, (p/250)%250, p%250+1)},
		})
	}
	return in
}

func BenchmarkTranslate10k(b *testing.B) {
	in := ScaleInput(10000, 1000)
	cfg := DefaultConfig()
	b.ReportAllocs()
	for b.Loop() {
		if snap := Translate(cfg, in); len(snap.Workloads) != 10000 {
			b.Fatalf("%d workloads", len(snap.Workloads))
		}
	}
}

// BenchmarkTranslateOnePodChange10k is the common case at scale: one pod changed since the last
// translation, nothing else.
func BenchmarkTranslateOnePodChange10k(b *testing.B) {
	in := ScaleInput(10000, 1000)
	for i, ns := range in.Namespaces {
		ns.ResourceVersion = fmt.Sprint("ns", i)
	}
	for i, s := range in.Services {
		s.ResourceVersion = fmt.Sprint("svc", i)
	}
	for i, p := range in.Pods {
		p.ResourceVersion = fmt.Sprint("pod", i)
	}
	tr := NewTranslator(DefaultConfig())
	tr.Translate(in)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		p := in.Pods[7].DeepCopy()
		p.ResourceVersion = fmt.Sprint("changed", i)
		in.Pods[7] = p
		if snap := tr.Translate(in); len(snap.Workloads) != 10000 {
			b.Fatalf("%d workloads", len(snap.Workloads))
		}
	}
}
