package model

import (
	"cmp"
	"fmt"
	"slices"
)

// Problem is something an object asks for that translation could not give it as written (DESIGN.md
// §8). Translation never fails as a whole: it leaves out, narrows, or (for policy) errs on the side
// of denying, and says so here. Problems are what istiod-lite logs, writes as Kubernetes Events on
// the object, and, where the object has a status istiod-lite writes, as a condition.
type Problem struct {
	// Kind, Namespace and Name name the object the user should look at: the one that carries what
	// could not be translated (a Namespace's waypoint label, not each of its pods).
	Kind, Namespace, Name string
	// Condition is the status condition the problem belongs to (Condition*), "" when istiod-lite
	// writes no condition on objects of this kind.
	Condition string
	// Reason is one CamelCase word, as in conditions and Events (Reason*).
	Reason  string
	Message string
	// Rejected says the object is not in force at all for Condition (its condition is False);
	// otherwise it is in force with what the message says left out or narrowed.
	Rejected bool
}

func (p Problem) String() string {
	if p.Namespace == "" {
		return fmt.Sprintf("%s %s: %s", p.Kind, p.Name, p.Message)
	}
	return fmt.Sprintf("%s %s/%s: %s", p.Kind, p.Namespace, p.Name, p.Message)
}

// Conditions istiod-lite writes. The first two are Istio's, on AuthorizationPolicy (and, here, on
// PeerAuthentication as well); the third is Istio's on Services bound to a waypoint. Route
// problems carry the Gateway API condition they are written as (Accepted, ResolvedRefs).
const (
	ConditionZtunnelAccepted  = "ZtunnelAccepted"
	ConditionWaypointAccepted = "WaypointAccepted"
	ConditionWaypointBound    = "istio.io/WaypointBound"
)

// Reasons of problems.
const (
	// ReasonUnsupportedValue: an attribute the enforcing proxy cannot see (Istio's reason).
	ReasonUnsupportedValue = "UnsupportedValue"
	// ReasonInvalidValue: a value that does not parse.
	ReasonInvalidValue = "InvalidValue"
	// ReasonIgnored: the object is valid but another one takes precedence, or Istio ignores it.
	ReasonIgnored = "Ignored"
	// ReasonNotImplemented: istiod-lite does not translate this yet.
	ReasonNotImplemented = "NotImplemented"
	// ReasonWaypointNotFound: istio.io/use-waypoint names no waypoint Gateway.
	ReasonWaypointNotFound = "WaypointNotFound"
	// ReasonAttachmentDenied: the waypoint's allowedRoutes do not admit the binding's namespace.
	ReasonAttachmentDenied = "AttachmentDenied"
	// ReasonUnsupportedTrafficType: the waypoint does not carry this class of traffic (istio.io/waypoint-for).
	ReasonUnsupportedTrafficType = "UnsupportedTrafficType"
)

// sortProblems sorts ps and removes duplicates (a Namespace's problem is found once per pod).
func sortProblems(ps []Problem) []Problem {
	slices.SortFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Condition, b.Condition), cmp.Compare(a.Message, b.Message), cmp.Compare(a.Reason, b.Reason),
			boolCompare(a.Rejected, b.Rejected))
	})
	return slices.Compact(ps)
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}
