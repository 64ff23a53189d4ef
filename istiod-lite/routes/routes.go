// Package routes writes the status of the HTTPRoutes and GRPCRoutes attached to the mesh (DESIGN.md
// §2): those whose parentRefs name a Service (GAMMA) or a waypoint Gateway. For each such parent it
// sets Accepted (the parent exists and the reference is valid) and ResolvedRefs (every backend is a
// Service that exists and, across namespaces, is allowed by a ReferenceGrant), under the mesh's
// controller name; parents of other controllers are left as they are. Only the elected leader runs
// it. What the routes do to traffic is the waypoint's business, not this package's.
package routes

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// Input is the cluster state route status depends on.
type Input struct {
	HTTPRoutes      []*gwv1.HTTPRoute
	GRPCRoutes      []*gwv1.GRPCRoute
	Services        []*corev1.Service
	Gateways        []*gwv1.Gateway
	ReferenceGrants []*gwv1.ReferenceGrant
}

// Writer keeps route status up to date.
type Writer struct {
	gw gwclient.Interface
}

// NewWriter returns a Writer that updates status through gw.
func NewWriter(gw gwclient.Interface) *Writer { return &Writer{gw: gw} }

// Reconcile writes the status of every route whose mesh parents' status differs from what in
// says; it carries on past a failing route and returns every error.
func (w *Writer) Reconcile(ctx context.Context, in Input) error {
	idx := newIndex(in)
	var views []route
	for _, r := range in.HTTPRoutes {
		v := route{kind: "HTTPRoute", obj: r, parents: r.Spec.ParentRefs, status: r.Status.Parents,
			update: func(parents []gwv1.RouteParentStatus) error {
				r = r.DeepCopy()
				r.Status.Parents = parents
				_, err := w.gw.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{})
				return err
			}}
		for _, rule := range r.Spec.Rules {
			for _, b := range rule.BackendRefs {
				v.backends = append(v.backends, b.BackendRef)
			}
		}
		views = append(views, v)
	}
	for _, r := range in.GRPCRoutes {
		v := route{kind: "GRPCRoute", obj: r, parents: r.Spec.ParentRefs, status: r.Status.Parents,
			update: func(parents []gwv1.RouteParentStatus) error {
				r = r.DeepCopy()
				r.Status.Parents = parents
				_, err := w.gw.GatewayV1().GRPCRoutes(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{})
				return err
			}}
		for _, rule := range r.Spec.Rules {
			for _, b := range rule.BackendRefs {
				v.backends = append(v.backends, b.BackendRef)
			}
		}
		views = append(views, v)
	}
	var errs []error
	for _, v := range views {
		if v.obj.GetDeletionTimestamp() != nil {
			continue
		}
		want, changed := idx.parents(v)
		if !changed {
			continue
		}
		if err := v.update(want); err != nil {
			errs = append(errs, fmt.Errorf("%s %s/%s status: %w", v.kind, v.obj.GetNamespace(), v.obj.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// route is what status is computed from, the same for every route kind.
type route struct {
	kind     string
	obj      metav1.Object
	parents  []gwv1.ParentReference
	backends []gwv1.BackendRef
	status   []gwv1.RouteParentStatus
	update   func([]gwv1.RouteParentStatus) error
}

type index struct {
	services map[string]*corev1.Service // "<ns>/<name>"
	gateways map[string]*gwv1.Gateway   // "<ns>/<name>"
	grants   []*gwv1.ReferenceGrant
}

func newIndex(in Input) *index {
	idx := &index{services: map[string]*corev1.Service{}, gateways: map[string]*gwv1.Gateway{}, grants: in.ReferenceGrants}
	for _, s := range in.Services {
		idx.services[s.Namespace+"/"+s.Name] = s
	}
	for _, g := range in.Gateways {
		idx.gateways[g.Namespace+"/"+g.Name] = g
	}
	return idx
}

// parents returns the route's parent statuses with the mesh's entries recomputed, and whether that
// differs from its current status. Entries of other controllers are kept as they are.
func (idx *index) parents(r route) ([]gwv1.RouteParentStatus, bool) {
	ns, generation, current := r.obj.GetNamespace(), r.obj.GetGeneration(), r.status
	var out []gwv1.RouteParentStatus
	for _, p := range current {
		if p.ControllerName != mesh.ControllerName {
			out = append(out, p)
		}
	}
	resolved := idx.resolvedRefs(r.kind, ns, r.backends, r.parents)
	resolved.ObservedGeneration = generation
	for _, ref := range r.parents {
		accepted, ours := idx.accepted(ns, ref)
		if !ours {
			continue
		}
		accepted.ObservedGeneration = generation
		st := gwv1.RouteParentStatus{ParentRef: ref, ControllerName: mesh.ControllerName}
		// Keep the transition times of conditions whose status did not change.
		for _, p := range current {
			if p.ControllerName == mesh.ControllerName && equality.Semantic.DeepEqual(p.ParentRef, ref) {
				st.Conditions = slices.Clone(p.Conditions)
			}
		}
		meta.SetStatusCondition(&st.Conditions, accepted)
		meta.SetStatusCondition(&st.Conditions, resolved)
		out = append(out, st)
	}
	return out, !equality.Semantic.DeepEqual(out, current) && !(len(out) == 0 && len(current) == 0)
}

// accepted decides the Accepted condition for a parent reference, and whether the parent is the
// mesh's at all: a Service, or a Gateway of the waypoint class. A reference to a missing Gateway
// is left to whichever controller owns that name.
func (idx *index) accepted(routeNS string, ref gwv1.ParentReference) (metav1.Condition, bool) {
	ns := routeNS
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	group, kind := "gateway.networking.k8s.io", "Gateway"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	key := ns + "/" + string(ref.Name)
	cond := func(ok bool, reason gwv1.RouteConditionReason, msg string) (metav1.Condition, bool) {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		return metav1.Condition{Type: string(gwv1.RouteConditionAccepted), Status: st, Reason: string(reason), Message: msg}, true
	}
	switch {
	case (group == "" || group == "core") && kind == "Service":
		svc, ok := idx.services[key]
		if !ok {
			return cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("Service %s not found", key))
		}
		if ref.SectionName != nil {
			return cond(false, gwv1.RouteReasonUnsupportedValue, "sectionName is not supported for a Service parent")
		}
		if ref.Port != nil && !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == int32(*ref.Port) }) {
			return cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("Service %s has no port %d", key, *ref.Port))
		}
		return cond(true, gwv1.RouteReasonAccepted, "attached to Service "+key)
	case group == "gateway.networking.k8s.io" && kind == "Gateway":
		g, ok := idx.gateways[key]
		if !ok || string(g.Spec.GatewayClassName) != mesh.WaypointGatewayClass {
			return metav1.Condition{}, false
		}
		if ref.SectionName != nil && !slices.ContainsFunc(g.Spec.Listeners, func(l gwv1.Listener) bool { return l.Name == *ref.SectionName }) {
			return cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("waypoint %s has no listener %q", key, *ref.SectionName))
		}
		if ref.Port != nil && !slices.ContainsFunc(g.Spec.Listeners, func(l gwv1.Listener) bool { return l.Port == *ref.Port }) {
			return cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("waypoint %s has no listener on port %d", key, *ref.Port))
		}
		return cond(true, gwv1.RouteReasonAccepted, "attached to waypoint "+key)
	}
	return metav1.Condition{}, false
}

// resolvedRefs decides the ResolvedRefs condition: the first backend that does not resolve names
// the reason.
func (idx *index) resolvedRefs(kind, routeNS string, backends []gwv1.BackendRef, parents []gwv1.ParentReference) metav1.Condition {
	for _, b := range backends {
		group, bkind := "", "Service"
		if b.Group != nil {
			group = string(*b.Group)
		}
		if b.Kind != nil {
			bkind = string(*b.Kind)
		}
		ns := routeNS
		if b.Namespace != nil {
			ns = string(*b.Namespace)
		}
		key := ns + "/" + string(b.Name)
		fail := func(reason gwv1.RouteConditionReason, msg string) metav1.Condition {
			return metav1.Condition{Type: string(gwv1.RouteConditionResolvedRefs), Status: metav1.ConditionFalse, Reason: string(reason), Message: msg}
		}
		if (group != "" && group != "core") || bkind != "Service" {
			return fail(gwv1.RouteReasonInvalidKind, fmt.Sprintf("backend %s: kind %s.%s is not supported (Service only)", key, bkind, group))
		}
		if ns != routeNS && !ParentService(parents, routeNS, ns, string(b.Name)) && !idx.granted(kind, routeNS, ns, string(b.Name)) {
			return fail(gwv1.RouteReasonRefNotPermitted, fmt.Sprintf("backend %s: no ReferenceGrant in %s allows %s from %s", key, ns, kind, routeNS))
		}
		if _, ok := idx.services[key]; !ok {
			return fail(gwv1.RouteReasonBackendNotFound, fmt.Sprintf("backend Service %s not found", key))
		}
	}
	return metav1.Condition{Type: string(gwv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue, Reason: string(gwv1.RouteReasonResolvedRefs), Message: "all backends resolved"}
}

// granted reports whether a ReferenceGrant in ns lets a route of kind in fromNS refer to Service
// name there.
func (idx *index) granted(kind, fromNS, ns, name string) bool {
	return Granted(idx.grants, kind, fromNS, ns, name)
}

// ParentService reports whether one of a route's parentRefs (in namespace routeNS) is the
// Service ns/name. A consumer route sends to the Service it is attached to without a
// ReferenceGrant: GAMMA (GEP-1294) lets a route in another namespace refer to its parent, which it
// could not otherwise route to at all.
func ParentService(parents []gwv1.ParentReference, routeNS, ns, name string) bool {
	for _, p := range parents {
		pns := routeNS
		if p.Namespace != nil {
			pns = string(*p.Namespace)
		}
		if p.Group != nil && (*p.Group == "" || *p.Group == "core") && p.Kind != nil && *p.Kind == "Service" &&
			pns == ns && string(p.Name) == name {
			return true
		}
	}
	return false
}

// Granted reports whether one of grants, in ns, lets a route of kind in fromNS refer to Service
// name there.
func Granted(grants []*gwv1.ReferenceGrant, kind, fromNS, ns, name string) bool {
	for _, g := range grants {
		if g.Namespace != ns {
			continue
		}
		from := slices.ContainsFunc(g.Spec.From, func(f gwv1.ReferenceGrantFrom) bool {
			return string(f.Group) == "gateway.networking.k8s.io" && string(f.Kind) == kind && string(f.Namespace) == fromNS
		})
		to := slices.ContainsFunc(g.Spec.To, func(t gwv1.ReferenceGrantTo) bool {
			return (t.Group == "" || t.Group == "core") && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == name)
		})
		if from && to {
			return true
		}
	}
	return false
}
