// Package report surfaces translation problems (model.Problem, DESIGN.md §8) where users look for
// them:
//
//   - Log: one log line per object each time its problems change (and one when they are gone), on
//     every replica, from the push path (it makes no API call);
//   - Writer, on the elected leader only: a Kubernetes Event on the object each time its problems
//     change, and a status condition where istiod-lite owns one: ZtunnelAccepted (WaypointAccepted
//     for targetRefs) on AuthorizationPolicy and PeerAuthentication, as Istio writes them, and
//     istio.io/WaypointBound on Services.
//
// It does not decide what a problem is (model does), and does not write route or Gateway status
// (routes and waypoint do); a route's problems get their log line and Event here.
package report

import (
	"cmp"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// object names the object a problem is reported on.
type object struct{ kind, namespace, name string }

func objectOf(p model.Problem) object { return object{p.Kind, p.Namespace, p.Name} }

func (o object) compare(b object) int {
	return cmp.Or(cmp.Compare(o.kind, b.kind), cmp.Compare(o.namespace, b.namespace), cmp.Compare(o.name, b.name))
}

// byObject groups problems by object, each group in the order given (model sorts them).
func byObject(ps []model.Problem) map[object][]model.Problem {
	out := map[object][]model.Problem{}
	for _, p := range ps {
		out[objectOf(p)] = append(out[objectOf(p)], p)
	}
	return out
}

// messages joins the messages of one object's problems.
func messages(ps []model.Problem) string {
	ms := make([]string, 0, len(ps))
	for _, p := range ps {
		ms = append(ms, p.Message)
	}
	return strings.Join(slices.Compact(ms), "; ")
}

// Log logs problems once per change. It is not safe for concurrent use (the push path owns it).
type Log struct {
	log  *slog.Logger
	last map[object]string // messages as last logged
}

// NewLog returns a Log that writes to log.
func NewLog(log *slog.Logger) *Log {
	return &Log{log: log.With("component", "problems"), last: map[object]string{}}
}

// Report logs, at Warn, each object whose problems differ from the last call's, with its kind,
// namespace, name and every problem; and, at Info, each object that had problems and has none.
func (l *Log) Report(ps []model.Problem) {
	now := map[object]string{}
	groups := byObject(ps)
	for _, o := range slices.SortedFunc(maps.Keys(groups), object.compare) {
		g := groups[o]
		msg := messages(g)
		now[o] = msg
		if l.last[o] == msg {
			continue
		}
		l.log.Warn("not translated as written", "kind", o.kind, "namespace", o.namespace, "name", o.name,
			"reason", g[0].Reason, "problems", msg)
	}
	for _, o := range slices.SortedFunc(maps.Keys(l.last), object.compare) {
		if _, ok := now[o]; !ok {
			l.log.Info("problems resolved", "kind", o.kind, "namespace", o.namespace, "name", o.name)
		}
	}
	l.last = now
}
