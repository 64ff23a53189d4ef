package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// An incremental translation must always equal a full one, whatever changed in between.
func TestTranslatorMatchesFull(t *testing.T) {
	in := ScaleInput(300, 30)
	rv := 0
	bump := func(o metav1.Object) {
		rv++
		o.SetResourceVersion(strconv.Itoa(rv))
	}
	for _, ns := range in.Namespaces {
		bump(ns)
	}
	for _, s := range in.Services {
		bump(s)
	}
	for _, p := range in.Pods {
		bump(p)
	}
	for n := range 100 {
		in.Nodes = append(in.Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", n),
			Labels: map[string]string{LabelZone: "zone-a"}}})
	}
	cfg := DefaultConfig()
	tr := NewTranslator(cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	reused := 0
	for step := range 100 {
		var what string
		switch rng.IntN(9) {
		case 0, 1, 2: // a pod changes (the common case)
			i := rng.IntN(len(in.Pods))
			p := in.Pods[i].DeepCopy()
			p.Labels["app"] = fmt.Sprintf("app-%d", rng.IntN(30))
			if rng.IntN(2) == 0 {
				p.Annotations["ambient.istio.io/redirection"] = "disabled"
			}
			bump(p)
			in.Pods[i] = p
			what = "pod " + p.Name
		case 3: // a pod goes, another comes
			i := rng.IntN(len(in.Pods))
			p := in.Pods[i].DeepCopy()
			p.UID = types.UID(fmt.Sprintf("new-%d", step))
			p.Name = fmt.Sprintf("new-%d", step)
			bump(p)
			in.Pods[i] = p
			what = "pod replaced"
		case 4: // a namespace leaves or joins the mesh
			ns := in.Namespaces[rng.IntN(len(in.Namespaces))].DeepCopy()
			if ns.Labels["istio.io/dataplane-mode"] == "ambient" {
				delete(ns.Labels, "istio.io/dataplane-mode")
			} else {
				ns.Labels["istio.io/dataplane-mode"] = "ambient"
			}
			bump(ns)
			for i := range in.Namespaces {
				if in.Namespaces[i].Name == ns.Name {
					in.Namespaces[i] = ns
				}
			}
			what = "namespace " + ns.Name
		case 5: // a service changes its selector
			i := rng.IntN(len(in.Services))
			s := in.Services[i].DeepCopy()
			s.Spec.Selector = map[string]string{"app": fmt.Sprintf("app-%d", rng.IntN(30))}
			bump(s)
			in.Services[i] = s
			what = "service " + s.Name
		case 6: // an object without a resourceVersion: cannot be told apart, so full translation
			i := rng.IntN(len(in.Pods))
			p := in.Pods[i].DeepCopy()
			p.Status.Phase = corev1.PodPending
			p.ResourceVersion = ""
			in.Pods[i] = p
			what = "pod without resourceVersion"
		case 7: // a node moves to another zone (node objects have no fingerprinted resourceVersion)
			i := rng.IntN(len(in.Nodes))
			n := in.Nodes[i].DeepCopy()
			n.Labels[LabelZone] = fmt.Sprintf("zone-%d", rng.IntN(3))
			in.Nodes[i] = n
			what = "node " + n.Name
		default:
			what = "nothing"
		}
		before := tr.last
		got := tr.Translate(in)
		want := Translate(cfg, in)
		if !sameSnapshot(want, got) {
			diff := cmp.Diff(want, got, protocmp.Transform())
			t.Fatalf("step %d (%s): incremental differs from full (-full +incremental):\n%s", step, what, diff)
		}
		if before != nil && len(got.Workloads) > 0 {
			for name, w := range got.Workloads {
				if before.Workloads[name] == w {
					reused++
					break
				}
			}
		}
	}
	if reused == 0 {
		t.Error("no translation reused a workload: the test does not exercise reuse")
	}
}

func sameSnapshot(a, b *Snapshot) bool {
	return sameMessages(a.Workloads, b.Workloads) && sameMessages(a.Services, b.Services) &&
		sameMessages(a.Authorizations, b.Authorizations) && slices.Equal(a.Problems, b.Problems)
}

func sameMessages[M proto.Message](a, b map[string]M) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !proto.Equal(v, w) {
			return false
		}
	}
	return true
}
