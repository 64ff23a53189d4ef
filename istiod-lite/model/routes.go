package model

import (
	"github.com/ambient-mesh/ambient/istiod-lite/routes"
)

// KindHTTPRoute and KindGRPCRoute name the route kinds problems are reported on.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
)

// routeProblems reports the mesh's routes that a parent does not accept or whose backends do not
// resolve. Their conditions (Accepted, ResolvedRefs) are routes.Writer's to write; the problems
// are for the logs and Events, like every other translation problem.
func routeProblems(in Input) []Problem {
	findings := routes.Check(routes.Input{HTTPRoutes: in.HTTPRoutes, GRPCRoutes: in.GRPCRoutes,
		Services: in.Services, Gateways: in.Gateways, ReferenceGrants: in.ReferenceGrants})
	out := make([]Problem, 0, len(findings))
	for _, f := range findings {
		out = append(out, Problem{Kind: f.Kind, Namespace: f.Namespace, Name: f.Name, Condition: f.Condition,
			Reason: f.Reason, Message: f.Message, Rejected: true})
	}
	return out
}
