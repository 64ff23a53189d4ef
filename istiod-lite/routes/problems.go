package routes

import (
	"cmp"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Finding is a condition of a route's mesh parent that is False: the route is not attached to that
// parent, or a backend does not resolve. It is what Writer writes as status, for the logs and
// Events the control plane also reports (model.Problem).
type Finding struct {
	Kind, Namespace, Name string
	// Condition is the Gateway API condition type (Accepted, ResolvedRefs).
	Condition string
	Reason    string
	Message   string
}

// Check returns the findings of every route in in, sorted, the same conditions Reconcile writes.
// It reads only in.
func Check(in Input) []Finding {
	idx := newIndex(in)
	var out []Finding
	add := func(kind string, obj metav1.Object, parents []gwv1.ParentReference, backends []gwv1.BackendRef) {
		if obj.GetDeletionTimestamp() != nil {
			return
		}
		st, _ := idx.parents(route{kind: kind, obj: obj, parents: parents, backends: backends})
		for _, p := range st {
			for _, c := range p.Conditions {
				if c.Status == metav1.ConditionFalse {
					out = append(out, Finding{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName(),
						Condition: c.Type, Reason: c.Reason, Message: c.Message})
				}
			}
		}
	}
	for _, r := range in.HTTPRoutes {
		var backends []gwv1.BackendRef
		for _, rule := range r.Spec.Rules {
			for _, b := range rule.BackendRefs {
				backends = append(backends, b.BackendRef)
			}
		}
		add("HTTPRoute", r, r.Spec.ParentRefs, backends)
	}
	for _, r := range in.GRPCRoutes {
		var backends []gwv1.BackendRef
		for _, rule := range r.Spec.Rules {
			for _, b := range rule.BackendRefs {
				backends = append(backends, b.BackendRef)
			}
		}
		add("GRPCRoute", r, r.Spec.ParentRefs, backends)
	}
	slices.SortFunc(out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Condition, b.Condition), cmp.Compare(a.Message, b.Message))
	})
	// One route with several parents has the same ResolvedRefs finding for each.
	return slices.Compact(out)
}
