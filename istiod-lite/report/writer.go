package report

// The leader's side: Events and conditions. Rules this file keeps:
//   - An Event is written for an object when its problems change (appear, or read differently),
//     once per leader term: a new term writes the current ones again, since another replica led
//     meanwhile. Events are Warnings whose reason is the first problem's.
//   - A condition is written only when the cached object's differs (type, status, reason,
//     message, observedGeneration), so an unchanged cluster costs no write; its
//     lastTransitionTime changes only with its status.
//   - Every object has the condition of the proxy that enforces it: an AuthorizationPolicy or
//     PeerAuthentication ZtunnelAccepted (WaypointAccepted with targetRefs), True/Accepted when
//     nothing is wrong, True with the reason of what was narrowed, False when it is not in force.
//     A Service bound to a waypoint has istio.io/WaypointBound True, one whose binding failed
//     False; one with no binding loses the condition.
//   - Each call is bounded by the caller's client (its timeout); a pass carries on past a failed
//     write and returns every error; a cancelled ctx ends the pass.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metaapi "istio.io/api/meta/v1alpha1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// Component is the source of istiod-lite's Events.
const Component = "istiod-lite"

// Writer writes Events and conditions for problems. It is not safe for concurrent use (the
// leader's goroutine owns it).
type Writer struct {
	kube     kubernetes.Interface
	istio    istioclient.Interface
	instance string // this replica, as the Events' reporting instance
	now      func() time.Time
	events   map[object]string // messages last written as an Event, this term
}

// NewWriter returns a Writer writing through kube and istio; instance names this replica in
// Events; now is the clock of Event and condition times.
func NewWriter(kube kubernetes.Interface, istio istioclient.Interface, instance string, now func() time.Time) *Writer {
	return &Writer{kube: kube, istio: istio, instance: instance, now: now, events: map[object]string{}}
}

// Reset forgets the Events written, so that the next Reconcile writes the current ones (a new
// leader term).
func (w *Writer) Reset() { clear(w.events) }

// Reconcile writes the Events and conditions of snap's problems on the objects of in (the input
// snap was translated from).
func (w *Writer) Reconcile(ctx context.Context, in model.Input, snap *model.Snapshot) error {
	groups := byObject(snap.Problems)
	idx := newIndex(in, groups)
	var errs []error
	for _, o := range slices.SortedFunc(maps.Keys(groups), object.compare) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := messages(groups[o])
		if w.events[o] == msg {
			continue
		}
		if err := w.event(ctx, o, idx.meta(o), groups[o][0].Reason, msg); err != nil {
			errs = append(errs, err)
			continue
		}
		w.events[o] = msg
	}
	for o := range w.events {
		if _, ok := groups[o]; !ok {
			delete(w.events, o) // gone: if it comes back, it is news again
		}
	}
	for _, ap := range in.AuthorizationPolicies {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := w.authorizationPolicy(ctx, ap, groups); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ra := range in.RequestAuthentications {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := w.requestAuthentication(ctx, ra, groups); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pa := range in.PeerAuthentications {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := w.peerAuthentication(ctx, pa, groups); err != nil {
			errs = append(errs, err)
		}
	}
	bound := boundWaypoints(snap)
	for _, s := range in.Services {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := w.service(ctx, s, bound[s.Namespace+"/"+s.Name], groups); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// index finds the objects problems are reported on, for the Events' references.
type index map[object]metav1.Object

func newIndex(in model.Input, groups map[object][]model.Problem) index {
	idx := index{}
	add := func(kind string, o metav1.Object) {
		k := object{kind, o.GetNamespace(), o.GetName()}
		if _, ok := groups[k]; ok {
			idx[k] = o
		}
	}
	for _, o := range in.AuthorizationPolicies {
		add(model.KindAuthorizationPolicy, o)
	}
	for _, o := range in.PeerAuthentications {
		add(model.KindPeerAuthentication, o)
	}
	for _, o := range in.RequestAuthentications {
		add(model.KindRequestAuthentication, o)
	}
	for _, o := range in.DestinationRules {
		add(model.KindDestinationRule, o)
	}
	for _, o := range in.Services {
		add(model.KindService, o)
	}
	for _, o := range in.Namespaces {
		add(model.KindNamespace, o)
	}
	for _, o := range in.HTTPRoutes {
		add(model.KindHTTPRoute, o)
	}
	for _, o := range in.GRPCRoutes {
		add(model.KindGRPCRoute, o)
	}
	for _, g := range groups {
		if g[0].Kind == model.KindPod { // many pods, few with problems: only then look at them
			for _, o := range in.Pods {
				add(model.KindPod, o)
			}
			break
		}
	}
	return idx
}

func (idx index) meta(o object) metav1.Object { return idx[o] }

var apiVersions = map[string]string{
	model.KindAuthorizationPolicy:   secv1.SchemeGroupVersion.String(),
	model.KindPeerAuthentication:    secv1.SchemeGroupVersion.String(),
	model.KindRequestAuthentication: secv1.SchemeGroupVersion.String(),
	model.KindDestinationRule:       "networking.istio.io/v1",
	model.KindHTTPRoute:             "gateway.networking.k8s.io/v1",
	model.KindGRPCRoute:             "gateway.networking.k8s.io/v1",
}

// maxEventMessage bounds an Event's message (the events API's limit for a note).
const maxEventMessage = 1024

func (w *Writer) event(ctx context.Context, o object, m metav1.Object, reason, msg string) error {
	now := metav1.NewTime(w.now())
	ref := corev1.ObjectReference{Kind: o.kind, Namespace: o.namespace, Name: o.name, APIVersion: apiVersions[o.kind]}
	if ref.APIVersion == "" {
		ref.APIVersion = "v1"
	}
	if m != nil {
		ref.UID, ref.ResourceVersion = m.GetUID(), m.GetResourceVersion()
	}
	ns := o.namespace
	if ns == "" {
		ns = metav1.NamespaceDefault // Events of cluster-scoped objects
	}
	if len(msg) > maxEventMessage {
		msg = msg[:maxEventMessage-3] + "..."
	}
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", o.name, now.UnixNano()), Namespace: ns},
		InvolvedObject:      ref,
		Reason:              reason,
		Message:             msg,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: Component},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: Component,
		ReportingInstance:   w.instance,
	}
	if _, err := w.kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("event on %s %s/%s: %w", o.kind, o.namespace, o.name, err)
	}
	return nil
}

// condition is a condition istiod-lite wants on an object.
type condition struct {
	typ     string
	status  bool
	reason  string
	message string
}

// policyCondition decides the condition of a security object from its problems for typ: False
// when one rejects it, True with the first problem's reason when some narrow it, else accepted.
func policyCondition(typ string, ps []model.Problem, accepted string) condition {
	var mine []model.Problem
	for _, p := range ps {
		if p.Condition == typ {
			mine = append(mine, p)
		}
	}
	switch {
	case len(mine) == 0:
		return condition{typ: typ, status: true, reason: "Accepted", message: accepted}
	case slices.ContainsFunc(mine, func(p model.Problem) bool { return p.Rejected }):
		i := slices.IndexFunc(mine, func(p model.Problem) bool { return p.Rejected })
		return condition{typ: typ, status: false, reason: mine[i].Reason, message: messages(mine)}
	}
	return condition{typ: typ, status: true, reason: mine[0].Reason, message: messages(mine)}
}

// attachment returns the condition a security policy gets (WaypointAccepted when it has
// targetRefs, else ZtunnelAccepted), the other one (removed), and the message of acceptance.
func attachment(targeted bool) (typ, other, accepted string) {
	if targeted {
		return model.ConditionWaypointAccepted, model.ConditionZtunnelAccepted, "attached to waypoint"
	}
	return model.ConditionZtunnelAccepted, model.ConditionWaypointAccepted, "attached to ztunnel"
}

func (w *Writer) authorizationPolicy(ctx context.Context, ap *secv1.AuthorizationPolicy, groups map[object][]model.Problem) error {
	typ, other, accepted := attachment(ap.Spec.TargetRef != nil || len(ap.Spec.TargetRefs) > 0)
	want := policyCondition(typ, groups[object{model.KindAuthorizationPolicy, ap.Namespace, ap.Name}], accepted)
	conds, changed := w.istioConditions(&ap.Status, want, other, ap.Generation)
	if !changed {
		return nil
	}
	cp := ap.DeepCopy()
	cp.Status.Conditions = conds
	if _, err := w.istio.SecurityV1().AuthorizationPolicies(ap.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of AuthorizationPolicy %s/%s: %w", ap.Namespace, ap.Name, err)
	}
	return nil
}

// requestAuthentication writes WaypointAccepted on a RequestAuthentication with targetRefs, and
// ZtunnelAccepted (False: ztunnel cannot read a JWT) on one without.
func (w *Writer) requestAuthentication(ctx context.Context, ra *secv1.RequestAuthentication, groups map[object][]model.Problem) error {
	typ, other, accepted := attachment(ra.Spec.TargetRef != nil || len(ra.Spec.TargetRefs) > 0)
	want := policyCondition(typ, groups[object{model.KindRequestAuthentication, ra.Namespace, ra.Name}], accepted)
	conds, changed := w.istioConditions(&ra.Status, want, other, ra.Generation)
	if !changed {
		return nil
	}
	cp := ra.DeepCopy()
	cp.Status.Conditions = conds
	if _, err := w.istio.SecurityV1().RequestAuthentications(ra.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of RequestAuthentication %s/%s: %w", ra.Namespace, ra.Name, err)
	}
	return nil
}

func (w *Writer) peerAuthentication(ctx context.Context, pa *secv1.PeerAuthentication, groups map[object][]model.Problem) error {
	want := policyCondition(model.ConditionZtunnelAccepted, groups[object{model.KindPeerAuthentication, pa.Namespace, pa.Name}], "attached to ztunnel")
	conds, changed := w.istioConditions(&pa.Status, want, "", pa.Generation)
	if !changed {
		return nil
	}
	cp := pa.DeepCopy()
	cp.Status.Conditions = conds
	if _, err := w.istio.SecurityV1().PeerAuthentications(pa.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of PeerAuthentication %s/%s: %w", pa.Namespace, pa.Name, err)
	}
	return nil
}

// istioConditions returns the conditions of cur with want set and the condition of type drop
// removed, and whether they differ from cur's. cur is not modified.
func (w *Writer) istioConditions(cur *metaapi.IstioStatus, want condition, drop string, generation int64) ([]*metaapi.IstioCondition, bool) {
	status := "False"
	if want.status {
		status = "True"
	}
	var found *metaapi.IstioCondition
	dropped := false
	for _, c := range cur.GetConditions() {
		switch c.GetType() {
		case want.typ:
			found = c
		case drop:
			dropped = true
		}
	}
	if found != nil && !dropped && found.GetStatus() == status && found.GetReason() == want.reason &&
		found.GetMessage() == want.message && found.GetObservedGeneration() == generation {
		return nil, false
	}
	transition := timestamppb.New(w.now())
	if found != nil && found.GetStatus() == status && found.GetLastTransitionTime() != nil {
		transition = found.GetLastTransitionTime()
	}
	var out []*metaapi.IstioCondition
	for _, c := range cur.GetConditions() {
		if c.GetType() != want.typ && (drop == "" || c.GetType() != drop) {
			out = append(out, c)
		}
	}
	out = append(out, &metaapi.IstioCondition{Type: want.typ, Status: status, Reason: want.reason,
		Message: want.message, ObservedGeneration: generation, LastTransitionTime: transition})
	return out, true
}

// service writes istio.io/WaypointBound on s, bound to waypoint ("" for none).
func (w *Writer) service(ctx context.Context, s *corev1.Service, waypoint string, groups map[object][]model.Problem) error {
	var want *metav1.Condition
	for _, p := range groups[object{model.KindService, s.Namespace, s.Name}] {
		if p.Condition == model.ConditionWaypointBound {
			want = &metav1.Condition{Type: model.ConditionWaypointBound, Status: metav1.ConditionFalse, Reason: p.Reason, Message: p.Message}
			break
		}
	}
	if want == nil {
		if waypoint != "" {
			want = &metav1.Condition{Type: model.ConditionWaypointBound, Status: metav1.ConditionTrue, Reason: "Bound", Message: "bound to waypoint " + waypoint}
		}
	}
	cur := apimeta.FindStatusCondition(s.Status.Conditions, model.ConditionWaypointBound)
	conds := slices.Clone(s.Status.Conditions)
	switch {
	case want == nil && cur == nil:
		return nil
	case want == nil:
		apimeta.RemoveStatusCondition(&conds, model.ConditionWaypointBound)
	default:
		want.ObservedGeneration = s.Generation
		if cur != nil && cur.Status == want.Status && cur.Reason == want.Reason && cur.Message == want.Message &&
			cur.ObservedGeneration == want.ObservedGeneration {
			return nil
		}
		want.LastTransitionTime = metav1.NewTime(w.now())
		apimeta.SetStatusCondition(&conds, *want)
	}
	cp := s.DeepCopy()
	cp.Status.Conditions = conds
	if _, err := w.kube.CoreV1().Services(s.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of Service %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

// boundWaypoints maps "<namespace>/<name>" of each Service bound to a waypoint to the waypoint's
// "<namespace>/<hostname>".
func boundWaypoints(snap *model.Snapshot) map[string]string {
	out := map[string]string{}
	for _, svc := range snap.Services {
		if h := svc.GetWaypoint().GetHostname(); h != nil {
			out[svc.GetNamespace()+"/"+svc.GetName()] = h.GetNamespace() + "/" + h.GetHostname()
		}
	}
	return out
}
